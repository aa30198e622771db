"""Generic properties of every public layer, driven by the registry in cases/.

For each case: output shape == output_signature; NumPy == JAX; jit == no-jit;
weights tree identical across modes; finite-difference gradients on JAX
(float64). A public layer without a case fails test_registry_covers_public_layers.
"""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.configurables import LAYER_API
from trax_sparse.fastmath import tree_leaves, tree_map, tree_structure
from tests import helpers
from tests.layers.cases import all_cases

CASES = all_cases()
IDS = [c.id for c in CASES]
NOT_LAYERS = LAYER_API   # public names of `tl` that are the API itself, not layers


def _init(case, mode, backend):
    with fastmath.use_backend(backend):
        layer = case.make(mode)
        x = case.inputs()
        weights, state = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
    return layer, x, weights, state


def test_registry_covers_public_layers():
    public = {n for n in tl.__all__ if n not in NOT_LAYERS and not n.endswith('Initializer')}
    missing = public - {c.name for c in CASES}
    assert not missing, f'public layers without a registry case: {sorted(missing)}'


def test_registry_names_are_public():
    assert {c.name for c in CASES} <= set(tl.__all__)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_output_signature_matches_forward(case, backend_name):
    layer, x, w, s = _init(case, 'eval', backend_name)
    y, _ = layer.pure_fn(x, w, s, fastmath.random.get_prng(1))
    expected = shapes.signature(y)
    assert layer.output_signature(shapes.signature(x)) == expected
    fresh = case.make('eval')  # not initialized: signature from abstract init
    assert fresh.output_signature(shapes.signature(x)) == expected
    n_out = len(y) if isinstance(y, tuple) else 1
    assert n_out == layer.n_out


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_numpy_equals_jax(case):
    layer, x, w, s = _init(case, 'eval', 'numpy')
    rng = np.asarray(fastmath.random.get_prng(3) if False else np.array([0, 3], np.uint32))
    with fastmath.use_backend('numpy'):
        y_np, s_np = layer.pure_fn(x, w, s, rng)
    with fastmath.use_backend('jax'):
        y_jax, s_jax = layer.pure_fn(x, w, s, rng)
    helpers.assert_trees_close(y_np, y_jax, atol=case.atol, rtol=1e-4, msg='outputs')
    helpers.assert_trees_close(s_np, s_jax, atol=case.atol, rtol=1e-4, msg='state')


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_jit_equals_no_jit(case):
    layer, x, w, s = _init(case, 'eval', 'jax')
    rng = np.array([0, 5], np.uint32)
    with fastmath.use_backend('jax'):
        y, _ = layer.pure_fn(x, w, s, rng)
        y_jit, _ = jax.jit(layer.pure_fn)(x, w, s, rng)
    helpers.assert_trees_close(y, y_jit, atol=case.atol, rtol=1e-4)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_weights_tree_identical_across_modes(case):
    modes = ('train', 'eval', 'predict') if case.predict_ok else ('train', 'eval')
    trees = []
    for mode in modes:
        _, _, w, _ = _init(case, mode, 'numpy')
        trees.append((tree_structure(w), [np.shape(a) for a in tree_leaves(w)]))
    assert all(t == trees[0] for t in trees)


@pytest.mark.parametrize('case', [c for c in CASES if c.grad_check], ids=lambda c: c.id)
def test_finite_difference_gradients(case):
    layer, x, w, s = _init(case, 'eval', 'jax')
    probe = np.random.default_rng(7)
    rng = np.array([0, 9], np.uint32)
    with fastmath.use_backend('jax'):
        out_sig = layer.output_signature(shapes.signature(x))
    projections = tree_map(lambda sig: probe.normal(size=sig.shape), out_sig)
    float_inputs = [i for i, a in enumerate(x if isinstance(x, tuple) else (x,))
                    if np.issubdtype(np.asarray(a).dtype, np.floating)]

    def loss(params):
        weights, xs = params
        inputs = list(x if isinstance(x, tuple) else (x,))
        for i, value in zip(float_inputs, xs):
            inputs[i] = value
        inputs = tuple(inputs) if isinstance(x, tuple) else inputs[0]
        y, _ = layer.pure_fn(inputs, weights, s, rng)
        terms = tree_map(lambda a, p: (a * p).sum(), y, projections)
        return sum(tree_leaves(terms))

    xs = [np.asarray(x if not isinstance(x, tuple) else x[i]) for i in float_inputs]
    probed = helpers.check_grads_fd(loss, (w, xs))
    assert probed > 0


@pytest.mark.parametrize('mode', ['train', 'eval', 'predict'])
@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_layers_that_say_they_draw_nothing_ignore_the_rng(case, mode):
    """`uses_rng` False lets combinators skip splitting keys: it must be true to the layer."""
    if mode == 'predict' and not case.predict_ok:
        pytest.skip('no predict mode for this case')
    layer, x, w, s = _init(case, mode, 'numpy')
    if layer.uses_rng:
        return
    with fastmath.use_backend('numpy'):
        outs = [layer.pure_fn(x, w, tree_map(np.copy, s), np.array(key, np.uint32))[0]
                for key in ([0, 1], [7, 9])]
    for a, b in zip(tree_leaves(outs[0]), tree_leaves(outs[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_layer_that_draws_says_so_and_its_draws_reach_it():
    dropout = tl.Serial(tl.Dense(8), tl.Dropout(0.5, mode='train'))
    assert dropout.uses_rng and not tl.Serial(tl.Dense(8), tl.Dropout(0.5, mode='eval')).uses_rng
    x = np.ones((4, 8), np.float32)
    with fastmath.use_backend('numpy'):
        w, s = dropout.init(shapes.signature(x))
        a, _ = dropout.pure_fn(x, w, s, np.array([0, 1], np.uint32))
        b, _ = dropout.pure_fn(x, w, s, np.array([7, 9], np.uint32))
    assert not np.array_equal(a, b)
