"""FlatForward (the NumPy decoding hot path) == pure_fn, bit for bit, outputs and state trees."""
import numpy as np
import pytest

from trax_sparse import decoding, fastmath, models, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import tree_leaves, tree_structure
from trax_sparse.layers.flat import FlatForward
from tests.layers.cases import all_cases

VOCAB = 16
CASES = all_cases()


def _assert_same(a, b):
    assert tree_structure(a) == tree_structure(b)
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_every_registry_layer_runs_flat_as_pure_fn(case):
    with fastmath.use_backend('numpy'):
        layer, x = case.make('train'), case.inputs()       # train: dropout keys too
        weights, state = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
        rng = fastmath.random.get_prng(5)
        expected = layer.pure_fn(x, weights, state, rng)
        _assert_same(FlatForward(layer)(x, weights, state, rng), expected)


def _lm_steps(model, weights, n_steps, run):
    """Feeds a 3-token prefix, then greedy tokens one at a time; returns all logits."""
    state = decoding.init_predict_state(model, shapes.ShapeDtype((2, 1), np.int32))
    tokens, outs = np.array([[3, 1, 4], [1, 5, 9]], np.int32), []
    for _ in range(n_steps):
        logits, state = run(tokens, weights, state, fastmath.random.get_prng(2))
        outs.append(logits)
        tokens = np.argmax(logits[:, -1:], -1).astype(np.int32)
    return outs, state


LMS = {
    'transformer_lm': lambda: models.TransformerLM(VOCAB, d_model=8, d_ff=16, n_layers=2,
                                                   n_heads=2, max_len=16, mode='predict'),
    'scaling_lm': lambda: models.ScalingTransformerLM(
        VOCAB, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16, ff_sparsity=4,
        attention_type='sparse_qkv', qkv_sparsity=4, loss_sparsity=2, mode='predict'),
    'reformer_lm': lambda: models.ReformerLM(
        VOCAB, d_model=8, d_ff=16, n_layers=2, n_heads=2, d_attention_key=4,
        d_attention_value=4, chunk_len=8, n_buckets=2, max_len=16, mode='predict'),
}


@pytest.mark.parametrize('name', sorted(LMS))
def test_decoder_models_step_flat_as_pure_fn(name):
    with fastmath.use_backend('numpy'):
        model = LMS[name]()
        weights, _ = model.init(shapes.ShapeDtype((2, 1), np.int32),
                                rng=fastmath.random.get_prng(1))
        flat, memo = FlatForward(model), {}
        got = _lm_steps(model, weights, 5, lambda *a: flat(*a, memo=memo))
        expected = _lm_steps(model, weights, 5, model.pure_fn)
    _assert_same(got, expected)


def test_terraformer_with_sru_steps_flat_as_pure_fn():
    inputs = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
    with fastmath.use_backend('numpy'):
        model = models.Terraformer(
            VOCAB, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=2, n_heads=2,
            d_attention_key=4, d_attention_value=4, decoder_attention_type='sparse_qkv',
            qkv_sparsity=2, ff_sparsity=4, loss_sparsity=2, ff_use_sru=(1, 4), max_len=32,
            mode='predict')
        signature = (shapes.signature(inputs), shapes.ShapeDtype((2, 1), np.int32))
        weights, _ = model.init(signature, rng=fastmath.random.get_prng(1))
        # The predict model's wrapper (EncoderInputsOnce) runs its child as a flat program
        # itself; the oracle is the child's tree-walking pure_fn.
        model = model.sublayers[0]
        flat, memo, results = FlatForward(model), {}, []
        for run in (lambda *a: flat(*a, memo=memo), model.pure_fn):
            state, outs = decoding.init_predict_state(model, signature), []
            tokens, given = np.array([[1, 2], [3, 4]], np.int32), inputs
            for _ in range(4):
                (logits, _), state = run((given, tokens), weights, state,
                                         fastmath.random.get_prng(2))
                outs.append(logits)
                tokens, given = np.argmax(logits[:, -1:], -1).astype(np.int32), inputs[:, :0]
            results.append((outs, state))
    _assert_same(*results)


def test_numpy_predict_step_is_flat_and_equals_the_eager_step():
    with fastmath.use_backend('numpy'):
        model = LMS['scaling_lm']()
        weights, _ = model.init(shapes.ShapeDtype((2, 1), np.int32))
        fast, eager = decoding.predict_step(model), decoding.predict_step(model, accelerate=False)
        assert fast._run is not eager._run
        results = []
        for step in (fast, eager):
            state = decoding.init_predict_state(model, shapes.ShapeDtype((2, 1), np.int32))
            tokens, outs = np.array([[3, 1, 4], [1, 5, 9]], np.int32), []
            for _ in range(4):
                logits, state = step(tokens, weights, state, fastmath.random.get_prng(2))
                outs.append(logits)
                tokens = np.argmax(logits, -1).astype(np.int32)[:, None]
            results.append((outs, state))
    _assert_same(*results)


def test_flat_errors_name_the_layer_path_as_pure_fn_does():
    model = tl.Serial(tl.Dense(4), tl.Branch(tl.Relu(), tl.Serial(tl.Dense(3), tl.Dense(2))))
    good, bad = np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)
    with fastmath.use_backend('numpy'):
        weights, state = model.init(shapes.signature(good))
        wrong = (weights[0], (weights[1][0], (weights[1][1][0], weights[1][1][0])))
        messages = []
        for run in (FlatForward(model), model.pure_fn):
            with pytest.raises(tl.LayerError) as error:
                run(bad, wrong, state)
            messages.append(error.value.layer_path)
    assert messages[0] == messages[1] == 'Serial[1]/Branch[1]/Serial[1]/Dense_2'


def test_flat_rejects_a_weights_tree_of_another_model():
    with fastmath.use_backend('numpy'):
        model = tl.Serial(tl.Dense(4), tl.Dense(2))
        weights, state = model.init(shapes.ShapeDtype((1, 3)))
        with pytest.raises(ValueError, match=r'Serial: the weights tree has no entry \[1\]'):
            FlatForward(model)(np.ones((1, 3), np.float32), weights[:1], state)


def test_flat_leaves_the_layers_weights_and_state_as_they_were():
    with fastmath.use_backend('numpy'):
        model = LMS['transformer_lm']()
        weights, _ = model.init(shapes.ShapeDtype((2, 1), np.int32))
        before = [(layer.weights, layer.state) for layer in model._walk()]
        _lm_steps(model, weights, 2, FlatForward(model))
        after = [(layer.weights, layer.state) for layer in model._walk()]
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(before, after))
