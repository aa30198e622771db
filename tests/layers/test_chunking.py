"""PositionwiseChunk: == the unchunked layer (NumPy, JAX, gradients, predict), replay, memory."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import tree_leaves
from trax_sparse.testing import autodiff_twin
from tests import helpers
from tests.layers.cases import floats

D, D_FF = 4, 16
RNG = np.array([0, 5], np.uint32)


def _ff(mode='eval', sparse=False):
    if sparse:
        return tl.SparseFF(D_FF, n_elements_in_block=4, quant_prob=0.5, mode=mode)
    return tl.Serial(tl.Dense(D_FF), tl.Relu(), tl.Dropout(0.0, mode=mode), tl.Dense(D))


def _init(layer, x):
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))


@pytest.mark.parametrize('backend_name', ['numpy', 'jax'])
@pytest.mark.parametrize('sparse', [False, True])
@pytest.mark.parametrize('length', [3, 8, 11])       # shorter than a chunk, a multiple, not
def test_output_equals_unchunked(backend_name, sparse, length):
    x = floats(2, length, D)
    plain = _ff('eval', sparse)
    weights, state = _init(plain, x)
    chunked = tl.PositionwiseChunk(_ff('eval', sparse), 4)
    _, chunked_state = _init(chunked, x)
    assert helpers.tree_structure(chunked.weights) == helpers.tree_structure(weights)
    with fastmath.use_backend('numpy'):
        want, _ = plain.pure_fn(x, weights, state, RNG)
    with fastmath.use_backend(backend_name):
        got, _ = chunked.pure_fn(x, weights, chunked_state, RNG)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_gradients_equal_unchunked():
    x = floats(2, 11, D)
    plain, chunked = _ff('train'), tl.PositionwiseChunk(_ff('train'), 4)
    weights, state = _init(plain, x)
    _, chunked_state = _init(chunked, x)
    projection = np.random.default_rng(3).normal(size=x.shape)

    def grads(layer, s):
        def loss(params):
            w, x_ = params
            return (layer.pure_fn(x_, w, s, RNG)[0] * projection).sum()
        return jax.jit(jax.grad(loss))(helpers.to_float64((weights, x)))
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        got, want = grads(chunked, chunked_state), grads(plain, state)
    helpers.assert_trees_close(got, want, atol=1e-10, rtol=1e-8)
    assert max(np.abs(g).max() for g in tree_leaves(got)) > 1e-3


@pytest.mark.parametrize('backend_name', ['numpy', 'jax'])
def test_predict_token_by_token_equals_eval(backend_name):
    x = floats(1, 9, D)
    evaluated = tl.PositionwiseChunk(_ff('eval', sparse=True), 4)
    weights, state = _init(evaluated, x)
    predicting = tl.PositionwiseChunk(_ff('predict', sparse=True), 4)
    _, predict_state = _init(predicting, x[:, :1])
    with fastmath.use_backend(backend_name):
        want, _ = evaluated.pure_fn(x, weights, state, RNG)
        steps = []
        for t in range(x.shape[1]):
            y, predict_state = predicting.pure_fn(x[:, t:t + 1], weights, predict_state, RNG)
            steps.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(want), atol=1e-5)


def test_reversible_backward_replays_each_chunks_choices():
    # SparseFF in train draws Gumbel choices and a quantization coin per call; the reversible
    # backward must hand each chunk its own recorded choices (the state, stacked per chunk).
    def stack():
        return tl.ReversibleSerial(
            tl.ReversibleHalfResidual(tl.LayerNorm(),
                                      tl.PositionwiseChunk(_ff('train', sparse=True), 3)),
            tl.ReversibleSwap())
    model = stack()
    x32 = (floats(2, 8, D), floats(2, 8, D, seed=1))
    weights, state = _init(model, x32)
    w, x = helpers.to_float64((weights, x32))
    projections = [np.random.default_rng(9 + i).normal(size=a.shape) for i, a in enumerate(x)]

    def grads(layer):
        def loss(params):
            ws, xs = params
            ys, _ = layer.pure_fn(tuple(xs), ws, state, RNG)
            return sum((y * p).sum() for y, p in zip(ys, projections))
        return jax.jit(jax.grad(loss))((w, list(x)))
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        got, want = grads(model), grads(autodiff_twin(model))
    helpers.assert_trees_close(got, want, atol=1e-10, rtol=1e-6)
    assert max(np.abs(g).max() for g in tree_leaves(got)) > 1e-3


def test_backward_keeps_one_chunk_of_hidden_units():
    length, d, d_ff = 2048, 32, 512
    x = jax.ShapeDtypeStruct((1, length, d), np.float32)

    def temp_bytes(layer):
        with fastmath.use_backend('numpy'):
            weights, state = layer.init(shapes.ShapeDtype(x.shape, x.dtype),
                                        rng=fastmath.random.get_prng(0))
        with fastmath.use_backend('jax'):
            def loss(w, x_):
                return (layer.pure_fn(x_, w, state, RNG)[0] ** 2).sum()
            compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(weights, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def ff():
        return tl.Serial(tl.Dense(d_ff), tl.Relu(), tl.Dense(d))
    plain, chunked = temp_bytes(ff()), temp_bytes(tl.PositionwiseChunk(ff(), 256))
    hidden = length * d_ff * 4                                       # one [1, L, d_ff] buffer
    assert plain >= 2 * hidden, plain                    # ~3 hidden buffers (h, relu mask, ct)
    assert chunked < hidden, (chunked, plain)            # less than one of them


def test_bad_arguments():
    with pytest.raises(ValueError, match='chunk_len'):
        tl.PositionwiseChunk(tl.Dense(3), 0)
    with pytest.raises(Exception, match='length'):
        _init(tl.PositionwiseChunk(tl.Add(), 2), (floats(1, 4, 3), floats(1, 5, 3)))
