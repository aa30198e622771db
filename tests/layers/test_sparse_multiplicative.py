"""MultiplicativeDense and SparseDenseWithOptions: numbers against
written-out NumPy formulas, parameter counts, errors."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from tests.layers.cases import floats


def _init(layer, x, seed=0):
    """Weights from the NumPy backend (fast, no JAX compiles); any backend can run them."""
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(x), rng=fastmath.random.get_prng(seed))


def _n_params(weights):
    return sum(np.size(w) for w in fastmath.tree_leaves(weights))


# ---- MultiplicativeDense ---------------------------------------------------------
@pytest.mark.parametrize('lead', [(2, 4), (1, 1), 'split'],
                         ids=['many_tokens', 'few_tokens', 'few_tokens_split'])
def test_multiplicative_dense_equals_its_formula(backend_name, lead):
    # 8 tokens >= M = 3 build the d_in x d_out product; 1 token gates the input per module
    # ('split': as a product large enough for NumPy to split it among threads).
    thresholds = {'parallel_matmul_min_macs': 0} if lead == 'split' else {}
    lead = (1, 1) if lead == 'split' else lead
    s, d_in, d_out = 3, 5, 9
    x = floats(*lead, d_in, seed=1)
    layer = tl.MultiplicativeDense(s, d_out)
    weights, state = _init(layer, x)
    with fastmath.tuned(**thresholds):
        y, _ = layer.pure_fn(x, weights, state)
    gate, proj, bias = (np.asarray(w, np.float64) for w in weights)
    m = d_out // s
    expected = np.zeros(lead + (d_out,))
    for module in range(s):
        for unit in range(m):
            expected[..., module * m + unit] = (
                np.sum(x * gate[module] * proj[:, unit], axis=-1) + bias[module * m + unit])
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('use_bias', [True, False])
def test_multiplicative_dense_parameter_count(use_bias):
    s, d_in, d_out = 4, 12, 20
    weights, _ = _init(tl.MultiplicativeDense(s, d_out, use_bias=use_bias), floats(1, d_in))
    assert _n_params(weights) == d_in * d_out // s + s * d_in + (d_out if use_bias else 0)


def test_multiplicative_dense_errors():
    with pytest.raises(ValueError, match='MultiplicativeDense: d_out=10 must be divisible by '
                                         'n_modules=4'):
        tl.MultiplicativeDense(4, 10)
    with pytest.raises(ValueError, match='MultiplicativeDense: n_modules must be a positive'):
        tl.MultiplicativeDense(0, 10)
    layer = tl.MultiplicativeDense(2, 4)
    weights, state = _init(layer, floats(2, 3))
    with fastmath.use_backend('numpy'), pytest.raises(
            tl.LayerError, match=r'MultiplicativeDense_2_4.*expected input with last axis 3'):
        layer.pure_fn(floats(2, 5), weights, state)


# ---- SparseDenseWithOptions ------------------------------------------------------
def test_sparse_dense_with_options_layers_and_parameter_counts(backend_name):
    d, n_units, s, r = 8, 12, 4, 3
    x = floats(2, 3, d, seed=4)
    dense = tl.SparseDenseWithOptions(n_units, 'mult', sparsity=0)
    mult = tl.SparseDenseWithOptions(n_units, 'mult', sparsity=s)
    lowrank = tl.SparseDenseWithOptions(n_units, 'lowrank', sparsity=s, d_lowrank=r)
    assert isinstance(dense, tl.Dense) and isinstance(mult, tl.MultiplicativeDense)
    counts = [_n_params(_init(layer, x)[0]) for layer in (dense, mult, lowrank)]
    assert counts == [d * n_units + n_units, d * n_units // s + s * d + n_units,
                      d * r + r + r * n_units + n_units]
    weights, state = _init(lowrank, x)
    y, _ = lowrank.pure_fn(x, weights, state)                     # logits, no softmax
    (w1, b1), (w2, b2) = weights
    np.testing.assert_allclose(y, (x @ w1 + b1) @ w2 + b2, atol=1e-5, rtol=1e-5)


def test_sparse_dense_with_options_errors():
    with pytest.raises(ValueError, match="SparseDenseWithOptions: sparsity_type must be one of"):
        tl.SparseDenseWithOptions(8, 'einsum', sparsity=2)
    with pytest.raises(ValueError, match="'lowrank' needs d_lowrank"):
        tl.SparseDenseWithOptions(8, 'lowrank', sparsity=2)
    with pytest.raises(ValueError, match='MultiplicativeDense: d_out=9 must be divisible'):
        tl.SparseDenseWithOptions(9, 'mult', sparsity=2)
    with pytest.raises(ValueError, match='SparseDenseWithOptions: mode must be one of'):
        tl.SparseDenseWithOptions(8, mode='serve')
