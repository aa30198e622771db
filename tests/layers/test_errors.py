"""Bad input gives errors that name the layer (with its path) and what was expected."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl


def test_wrong_input_shape_names_layer_path_and_expected_size(backend_name):
    model = tl.Serial(tl.Dense(4), tl.Branch(tl.Dense(16), None))
    model.init(shapes.signature(np.ones((2, 3), np.float32)))
    with pytest.raises(tl.LayerError) as err:
        model(np.ones((2, 5), np.float32))
    text = str(err.value)
    assert 'Serial[0]/Dense_4' in text
    assert 'expected input with last axis 3' in text and 'got shape (2, 5)' in text
    assert 'float32[2,5]' in text  # the shapes it received


def test_nested_path_through_combinators(backend_name):
    model = tl.Serial(tl.Dense(4), tl.Relu(), tl.Branch(tl.Dense(16), None))
    w, s = model.init(shapes.signature(np.ones((2, 3), np.float32)))
    bad = (w[0], w[1], ((np.ones((5, 16), np.float32), w[2][0][1]), ()))
    with pytest.raises(tl.LayerError, match=r'Serial\[2\]/Branch\[0\]/Dense_16'):
        model.pure_fn(np.ones((2, 3), np.float32), bad, s)


def test_wrong_number_of_stack_items(backend_name):
    add = tl.Add()
    with pytest.raises(tl.LayerError, match=r'Add: .*expected 2 inputs \(n_in=2\).*got 3'):
        add((np.ones(2), np.ones(2), np.ones(2)))
    model = tl.Serial(tl.Add(), tl.Add())
    with pytest.raises(tl.LayerError, match=r'Serial: .*expected 3 inputs \(n_in=3\).*got 2'):
        model.init(shapes.signature((np.ones(2), np.ones(2))))


def test_unknown_mode_names_the_layer():
    for make, name in [(lambda: tl.Dropout(0.1, mode='test'), 'Dropout'),
                       (lambda: tl.ShiftRight(mode='training'), 'ShiftRight'),
                       (lambda: tl.PositionalEncoding(mode='decode'), 'PositionalEncoding')]:
        with pytest.raises(ValueError, match=rf"{name}: mode must be one of \('train', 'eval', "
                                             r"'predict'\), got '\w+'"):
            make()


def test_grad_on_numpy_backend_names_jax():
    layer = tl.Dense(2)
    x = np.ones((1, 3), np.float32)
    w, s = layer.init(shapes.signature(x))
    with fastmath.use_backend('numpy'):
        with pytest.raises(fastmath.BackendError, match=r"fastmath.grad needs the JAX backend"):
            fastmath.grad(lambda w: layer.pure_fn(x, w, s)[0].sum())(w)


def test_embedding_rejects_ids_outside_vocab_and_float_ids(backend_name):
    emb = tl.Embedding(5, 3)
    emb.init(shapes.signature(np.zeros((1, 2), np.int32)))
    with pytest.raises(tl.LayerError, match=r'Embedding_5_3: token id 7 is outside the vocabulary '
                                            r'\[0, 5\)'):
        emb(np.array([[1, 7]], np.int32))
    with pytest.raises(tl.LayerError, match='expects integer token ids'):
        emb(np.array([[1.0, 2.0]], np.float32))


def test_positional_encoding_too_long(backend_name):
    pe = tl.PositionalEncoding(4)
    with pytest.raises(tl.LayerError, match='sequence length 6 exceeds max_len 4'):
        pe(np.ones((1, 6, 2), np.float32))


def test_fn_rejects_defaults_and_varargs():
    with pytest.raises(ValueError, match="Fn 'Bad': the function must take only plain positional"):
        tl.Fn('Bad', lambda x, y=1: x)
    with pytest.raises(ValueError, match='only plain positional'):
        tl.Fn('Bad', lambda *xs: xs)


def test_fn_wrong_number_of_outputs(backend_name):
    two = tl.Fn('Two', lambda x: x, n_out=2)
    with pytest.raises(tl.LayerError, match=r'Two: .*expected a tuple of 2 arrays \(n_out=2\)'):
        two(np.ones(2))


def test_select_index_out_of_range():
    with pytest.raises(ValueError, match=r'Select: indices \[0, 3\] must lie in \[0, n_in=2\)'):
        tl.Select([0, 3], n_in=2)


def test_serial_rejects_non_layers():
    with pytest.raises(TypeError, match='expected a Layer'):
        tl.Serial(tl.Relu(), 'Dense')


def test_metric_shape_mismatch(backend_name):
    with pytest.raises(tl.LayerError, match=r'targets shape \(2, 4\) must equal the logits shape'):
        tl.CrossEntropyLoss()((np.ones((2, 3, 5), np.float32), np.ones((2, 4), np.int32),
                               np.ones((2, 4), np.float32)))


def test_weights_of_another_model_are_a_clear_error(backend_name):
    a = tl.Serial(tl.Dense(2), tl.Relu(), tl.Dense(2))
    b = tl.Serial(tl.Dense(2), tl.Dense(2))
    x = np.ones((1, 2), np.float32)
    w, s = a.init(shapes.signature(x))
    with pytest.raises(tl.LayerError, match='Serial has 2 sublayers but got weights with tuple '
                                            'of 3 entries'):
        b.pure_fn(x, w, ((), ()))


def test_errors_say_where_the_failing_layer_was_created(backend_name):
    dense = tl.Dense(4)                                  # the line the error must point to
    line = __import__('inspect').currentframe().f_lineno - 1
    model = tl.Serial(tl.Relu(), dense)
    model.init(shapes.signature(np.ones((2, 3), np.float32)))
    with pytest.raises(tl.LayerError, match=rf'created at test_errors.py:{line}\)$'):
        model(np.ones((2, 5), np.float32))


def test_calling_before_init_says_to_call_init_first(backend_name):
    model = tl.Serial(tl.Dense(4), tl.Relu())
    with pytest.raises(tl.LayerError, match='call layer.init'):
        model.pure_fn(np.ones((2, 3), np.float32), None, None)


def test_a_mask_of_the_wrong_shape_names_the_layer_and_the_expected_axes():
    sru = tl.SRU(4, masked=True, mode='eval')
    x, mask = np.ones((2, 5, 4), np.float32), np.ones((2, 5), bool)
    w, s = sru.init(shapes.signature((x, mask)))
    with fastmath.use_backend('numpy'):
        with pytest.raises(tl.LayerError, match=r'SRU_4: the mask must have shape '
                                                r'\[batch, length\] = \(2, 5\), got \(2, 4\)'):
            sru.pure_fn((x, mask[:, :4]), w, s)
