"""The one engine (stack plans) and the public hooks that walkers of the layer tree use."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.decoding.timing import bytes_read_per_token
from trax_sparse.fastmath import tree_leaves, tree_structure
from trax_sparse.layers import plan
from trax_sparse.layers.flat import FlatForward
from trax_sparse.sharding import Axes
from tests.layers.cases import all_cases

CASES = all_cases()


class AddThenScale(tl.Layer):
    """A combinator written only as a plan: (a, b) -> f(a + b), b kept below."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, layer: tl.Layer):
        super().__init__(n_in=2, n_out=2, name='AddThenScale', sublayers=[layer])

    def plan(self) -> tuple:
        # [a, b] -> [b, a, b] -> [a + b, b] -> [f(a + b), b]
        return (plan.Permute(0, 2, (1, 0, 1)), plan.Accumulate(0), plan.Call(0))


def _two_inputs():
    rng = np.random.default_rng(0)
    return tuple(rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2))


def test_a_combinator_declared_as_a_plan_inits_runs_and_compiles():
    x = _two_inputs()
    with fastmath.use_backend('numpy'):
        layer = AddThenScale(tl.Serial(tl.Dense(3), tl.Relu()))
        weights, state = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
        y, new_state = layer.pure_fn(x, weights, state)
        flat_y, flat_state = FlatForward(layer)(x, weights, state)
    dense_w, dense_b = weights[0][0]
    expected = np.maximum((x[0] + x[1]) @ dense_w + dense_b, 0)
    np.testing.assert_allclose(y[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(y[1], x[1])
    for a, b in zip(tree_leaves((y, new_state)), tree_leaves((flat_y, flat_state))):
        np.testing.assert_array_equal(a, b)


def test_sublayers_get_split_keys_only_when_one_draws():
    quiet = tl.Serial(tl.Dense(2), tl.Relu())
    noisy = tl.Serial(tl.Dense(2), tl.Dropout(0.5, mode='train'))
    assert plan.key_split(quiet, plan.Call(1)) is None
    assert plan.key_split(noisy, plan.Call(1)) == (2, 1)
    assert plan.key_split(noisy, plan.Call(1, own_key=True)) is None


def test_init_computes_only_the_output_signatures_a_later_step_reads():
    calls = []

    class Counted(tl.Layer):
        def draws_random_numbers(self):
            return False

        def forward(self, x):
            calls.append(x.shape)
            return x

    x = np.ones((2, 3), np.float32)
    with fastmath.use_backend('numpy'):
        tl.Parallel(Counted(), Counted()).init(shapes.signature((x, x)))
        assert calls == []                      # outputs side by side: nobody reads them
        tl.Serial(Counted(), Counted()).init(shapes.signature(x))
    assert len(calls) == 1                      # the first one's output feeds the second


def test_a_plan_that_breaks_the_accumulator_shape_names_the_layer():
    model = tl.ReversibleHalfResidual(tl.Dense(5))
    x = (np.ones((2, 4), np.float32), np.ones((2, 4), np.float32))
    with fastmath.use_backend('numpy'), pytest.raises(tl.LayerError, match=(
            r"ReversibleHalfResidual: .*accumulator's shape \(2, 4\), got \(2, 5\)")):
        model.init(shapes.signature(x))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_every_layer_splits_its_trees_for_its_sublayers(case):
    with fastmath.use_backend('numpy'):
        layer, x = case.make('eval'), case.inputs()
        weights, state = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))

    def check(node, w, s):
        parts_w, parts_s = node.sublayer_weights(w), node.sublayer_states(s)
        assert len(parts_w) == len(parts_s) == len(node.sublayers), node.name
        for sub, sub_w, sub_s in zip(node.sublayers, parts_w, parts_s):
            check(sub, sub_w, sub_s)
    check(layer, weights, state)


@pytest.mark.parametrize('case', [c for c in CASES if c.predict_ok], ids=lambda c: c.id)
def test_a_decoding_step_reads_at_most_every_weight(case):
    with fastmath.use_backend('numpy'):
        layer, x = case.make('predict'), case.inputs()
        weights, _ = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
    total = sum(np.asarray(w).nbytes for w in tree_leaves(weights))
    assert 0 <= bytes_read_per_token(layer, weights) <= total
    assert layer.macs_per_step(weights, n_keys=4, kv_width=8) >= 0


def test_wrappers_forward_the_hooks_to_their_child():
    ff = tl.SparseFF(d_ff=32, n_elements_in_block=8, mode='predict')
    sig = shapes.ShapeDtype((1, 1, 16), np.float32)
    with fastmath.use_backend('numpy'):
        weights, _ = ff.init(sig)
        chunked = tl.Chunk(ff, 4)
        chunked.init(sig)
    # 4 blocks: the controller (16·4 + 4·32 + 32), 4 rows of W1ᵀ and of W2, and b2.
    expected = 4 * (16 * 4 + 4 * 32 + 32 + 2 * 4 * 16 + 16)
    assert ff.bytes_read_per_step(weights) == expected
    assert chunked.bytes_read_per_step(weights) == expected
    assert tl.Cache(ff).bytes_read_per_step(weights) == 0


def test_vocab_sizes_come_from_the_embeddings_in_order():
    model = tl.Serial(tl.Parallel(tl.Embedding(7, 4), tl.Embedding(9, 4)), tl.Add())
    assert model.vocab_sizes() == (7, 9)
    assert tl.Cache(tl.Embedding(5, 2)).vocab_sizes() == (5,)
    assert tl.Dense(3).vocab_sizes() == ()


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_every_weight_has_logical_axis_names(case):
    with fastmath.use_backend('numpy'):
        layer, x = case.make('train'), case.inputs()
        weights, _ = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
    axes = layer.weight_axes()
    assert tree_structure(axes) == tree_structure(weights), \
        f'{layer.name}: weight_axes() {axes} does not match its weights tree'
    for names, weight in zip(tree_leaves(axes), tree_leaves(weights)):
        assert isinstance(names, Axes) and len(names.names) == np.ndim(weight), (names, weight.shape)


def test_a_terraformer_step_reads_no_encoder_weights():
    from trax_sparse import models
    sizes = []
    for n_encoder_layers in (1, 3):                    # the encoder runs on the first call only
        model = models.Terraformer(32, d_model=16, d_ff=32, n_encoder_layers=n_encoder_layers,
                                   n_decoder_layers=1, n_heads=2, d_attention_key=8,
                                   d_attention_value=8, max_len=16, mode='predict')
        with fastmath.use_backend('numpy'):
            weights, _ = model.init((shapes.ShapeDtype((1, 4), np.int32),
                                     shapes.ShapeDtype((1, 1), np.int32)))
        sizes.append(bytes_read_per_token(model, weights))
    assert sizes[0] == sizes[1] > 0
