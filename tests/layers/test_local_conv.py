"""LocallyConvDense and LocallyConvDenseBranch: numbers against a written-out formula on
each of the three computation paths, gradients, predict == eval token by token, the branch
== Branch of single convolutions, parameter counts, errors."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.layers import local_conv as tlm
from tests.layers.cases import floats


def _init(layer, x, seed=0):
    """Weights from the NumPy backend (fast, no JAX compiles); any backend can run them."""
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(x), rng=fastmath.random.get_prng(seed))


def _n_params(weights):
    return sum(np.size(w) for w in fastmath.tree_leaves(weights))


def _conv_reference(x, kernel, bias, n_modules):
    """out[b, t, s, u] =
    Σ_{a, j, c} x[b, t−(lk−1)+a, s+j−(k−1)/2, c]·K[a, j, c, u] + bias[u].

    Out-of-range positions (the past before t=0, modules outside [0, S)) count as zeros.
    """
    lk, k, d_module, n_units = kernel.shape
    batch, length, _ = x.shape
    x4 = x.reshape(batch, length, n_modules, d_module).astype(np.float64)
    out = np.zeros((batch, length, n_modules, n_units)) + bias
    for t in range(length):
        for s in range(n_modules):
            for a in range(lk):
                for j in range(k):
                    t_in, s_in = t - (lk - 1) + a, s + j - (k - 1) // 2
                    if 0 <= t_in and 0 <= s_in < n_modules:       # causal; zero-padded modules
                        out[:, t, s] += x4[:, t_in, s_in] @ kernel[a, j]
    return out.reshape(batch, length, n_modules * n_units)


# The three ways to compute it, with the default fastmath.tuning(): gathered patches (2·5
# tokens <= conv_patches_max_tokens), stacked taps (more tokens, modules of >=
# conv_stacked_taps_min_width features), the convolution op.
TAPS_WIDTH = fastmath.tuning().conv_stacked_taps_min_width
CONV_PATHS = {'patches': (5, 3), 'taps': (9, TAPS_WIDTH), 'conv': (9, 3)}


@pytest.mark.parametrize('path', CONV_PATHS)
@pytest.mark.parametrize('kernel_size,length_kernel_size', [(3, 3), (1, 2), (5, 1)])
def test_locally_conv_dense_equals_its_formula(backend_name, kernel_size, length_kernel_size,
                                               path):
    length, d_module = CONV_PATHS[path]
    x = floats(2, length, 4 * d_module, seed=2)
    layer = tl.LocallyConvDense(4, 2, kernel_size=kernel_size,
                                length_kernel_size=length_kernel_size, mode='eval')
    weights, state = _init(layer, x)
    y, _ = layer.pure_fn(x, weights, state)
    assert y.shape == (2, length, 8)
    kernel, bias = (np.asarray(w, np.float64) for w in weights)
    np.testing.assert_allclose(y, _conv_reference(x, kernel, bias, 4), atol=1e-5, rtol=1e-5)


def test_locally_conv_dense_stacked_taps_gradient_equals_convolution_op():
    # Training differentiates the stacked taps: their gradient is the convolution op's.
    import jax
    x = floats(2, 9, 4 * TAPS_WIDTH, seed=4)
    layer = tl.LocallyConvDense(4, 5, kernel_size=3, length_kernel_size=3, mode='train')
    weights, state = _init(layer, x)
    cotangent = floats(2, 9, 20, seed=5)

    def gradients():
        with fastmath.use_backend('jax'):
            loss = lambda w, x: (layer.pure_fn(x, w, state)[0] * cotangent).sum()
            return jax.grad(loss, argnums=(0, 1))(weights, x)

    taps = gradients()
    with fastmath.tuned(conv_stacked_taps_min_width=10 ** 9):
        conv = gradients()
    for a, b in zip(fastmath.tree_leaves(taps), fastmath.tree_leaves(conv)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('length_kernel_size', [3, 1])
def test_locally_conv_dense_predict_equals_eval_token_by_token(backend_name, length_kernel_size):
    x = floats(2, 9, 8, seed=3)          # the full sequence takes the general convolution
    make = lambda mode: tl.LocallyConvDense(4, 3, kernel_size=3,
                                            length_kernel_size=length_kernel_size, mode=mode)
    weights, state = _init(make('eval'), x)
    full, _ = make('eval').pure_fn(x, weights, state)
    predict = make('predict')
    _, p_state = _init(predict, x[:, :3])
    assert np.shape(p_state) == (2, length_kernel_size - 1, 4, 2)
    outputs = []
    for step in [x[:, :3]] + [x[:, t:t + 1] for t in range(3, 9)]:
        y, p_state = predict.pure_fn(step, weights, p_state)
        outputs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(p_state, x[:, 9 - (length_kernel_size - 1):].reshape(
        2, length_kernel_size - 1, 4, 2), atol=0)


def test_locally_conv_dense_parameter_count():
    s, d, n_units, k, lk = 4, 16, 5, 3, 3
    weights, _ = _init(tl.LocallyConvDense(s, n_units, kernel_size=k, length_kernel_size=lk),
                       floats(1, 2, d))
    assert _n_params(weights) == lk * k * (d // s) * n_units + n_units


def test_locally_conv_dense_errors():
    with pytest.raises(ValueError, match='LocallyConvDense: kernel_size .* must be odd'):
        tl.LocallyConvDense(4, 2, kernel_size=2)
    with pytest.raises(ValueError, match='LocallyConvDense: length_kernel_size must be a positive'):
        tl.LocallyConvDense(4, 2, length_kernel_size=0)
    with pytest.raises(tl.LayerError, match='input width 10 must be divisible by n_modules=4'):
        _init(tl.LocallyConvDense(4, 2), floats(1, 2, 10))
    with pytest.raises(tl.LayerError, match=r'expects inputs \[batch, length, d\]'):
        _init(tl.LocallyConvDense(4, 2), floats(2, 8))
    predict = tl.LocallyConvDense(2, 2, length_kernel_size=2, mode='predict')
    weights, state = _init(predict, floats(2, 1, 4))
    with fastmath.use_backend('numpy'), pytest.raises(
            tl.LayerError, match='predict state was initialized for batch 2, got batch 3'):
        predict.pure_fn(floats(3, 1, 4), weights, state)


# ---- LocallyConvDenseBranch ------------------------------------------------------
def _branch_pair(mode, kernel_sizes=(3, 3, 1), lk=3, n_units=5):
    fused = tl.LocallyConvDenseBranch(4, n_units, kernel_sizes, length_kernel_size=lk, mode=mode)
    separate = tl.Branch(*[tl.LocallyConvDense(4, n_units, kernel_size=k, length_kernel_size=lk,
                                               mode=mode) for k in kernel_sizes])
    return fused, separate


@pytest.mark.parametrize('path', CONV_PATHS)
def test_locally_conv_dense_branch_equals_branch_of_convolutions(backend_name, path):
    length, d_module = CONV_PATHS[path]
    x = floats(2, length, 4 * d_module, seed=6)
    fused, separate = _branch_pair('eval')
    weights, state = _init(fused, x, seed=3)
    separate_weights, separate_state = _init(separate, x, seed=3)
    for a, b in zip(fastmath.tree_leaves(weights), fastmath.tree_leaves(separate_weights)):
        np.testing.assert_array_equal(a, b)            # same tree, same initial values
    assert fastmath.tree_structure(weights) == fastmath.tree_structure(separate_weights)
    ys, _ = fused.pure_fn(x, weights, state)
    expected, _ = separate.pure_fn(x, separate_weights, separate_state)
    assert len(ys) == 3
    for y, e in zip(ys, expected):
        np.testing.assert_allclose(y, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('d_module', [3, TAPS_WIDTH], ids=['conv', 'taps'])
def test_locally_conv_dense_branch_gradient_equals_branch_of_convolutions(d_module):
    import jax
    x = floats(2, 9, 4 * d_module, seed=7)
    fused, separate = _branch_pair('train', kernel_sizes=(3, 1, 5), lk=2)
    weights, state = _init(fused, x)
    _, separate_state = _init(separate, x)
    cotangents = [floats(2, 9, 20, seed=s) for s in (8, 9, 10)]

    def gradients(layer, state):
        with fastmath.use_backend('jax'):
            loss = lambda w, x: sum((y * c).sum() for y, c in
                                    zip(layer.pure_fn(x, w, state)[0], cotangents))
            return jax.grad(loss, argnums=(0, 1))(weights, x)

    for a, b in zip(fastmath.tree_leaves(gradients(fused, state)),
                    fastmath.tree_leaves(gradients(separate, separate_state))):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('shared', [False, True], ids=['one_thread', 'shared'])
def test_locally_conv_dense_branch_predict_equals_eval_token_by_token(backend_name, shared):
    # shared: the steps' products count as large (NumPy shares them among its threads).
    thresholds = {'parallel_matmuls_min_macs': 0} if shared else {}
    x = floats(2, 9, 8, seed=11)
    fused, _ = _branch_pair('eval', n_units=3)
    weights, state = _init(fused, x)
    full, _ = fused.pure_fn(x, weights, state)
    predict, _ = _branch_pair('predict', n_units=3)
    _, p_state = _init(predict, x[:, :3])
    assert np.shape(p_state) == (2, 2, 4, 2)           # one memory for the three convolutions
    outputs = []
    for step in [x[:, :3]] + [x[:, t:t + 1] for t in range(3, 9)]:
        with fastmath.tuned(**thresholds):
            ys, p_state = predict.pure_fn(step, weights, p_state)
        outputs.append([np.asarray(y) for y in ys])
    for i in range(3):
        np.testing.assert_allclose(np.concatenate([o[i] for o in outputs], axis=1), full[i],
                                   atol=1e-5, rtol=1e-5)


def test_locally_conv_dense_branch_errors():
    with pytest.raises(ValueError, match='LocallyConvDenseBranch: kernel_sizes must name'):
        tl.LocallyConvDenseBranch(4, 2, kernel_sizes=())
    with pytest.raises(ValueError, match='LocallyConvDenseBranch: kernel_size .* must be odd'):
        tl.LocallyConvDenseBranch(4, 2, kernel_sizes=(3, 2))
    with pytest.raises(tl.LayerError, match='LocallyConvDenseBranch_4_2: the input width 10 '
                                            'must be divisible by n_modules=4'):
        _init(tl.LocallyConvDenseBranch(4, 2), floats(1, 2, 10))
