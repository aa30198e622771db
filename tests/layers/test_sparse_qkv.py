"""MultiplicativeConvCausalAttention: predict == eval token by token, causality,
composition of its parts, parameter counts, errors."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from tests.layers.cases import floats

D, HEADS, S, LK = 8, 2, 4, 3


def _init(layer, x, seed=0):
    """Weights from the NumPy backend (fast, no JAX compiles); any backend can run them."""
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(x), rng=fastmath.random.get_prng(seed))


def _make(mode, output_layer_type='none'):
    return tl.MultiplicativeConvCausalAttention(D, n_heads=HEADS, sparsity=S, length_kernel_size=LK,
                                                max_len=16, output_layer_type=output_layer_type,
                                                mode=mode)


@pytest.mark.parametrize('output_layer_type', ['none', 'conv'])
def test_predict_equals_eval_token_by_token(backend_name, output_layer_type):
    x = floats(2, 9, D, seed=1)      # eval convolves 18 tokens: the general convolution path
    weights, state = _init(_make('eval', output_layer_type), x)
    full, _ = _make('eval', output_layer_type).pure_fn(x, weights, state)
    predict = _make('predict', output_layer_type)
    _, p_state = _init(predict, x[:, :3])
    outputs = []
    for step in [x[:, :3]] + [x[:, t:t + 1] for t in range(3, 9)]:
        y, p_state = predict.pure_fn(step, weights, p_state)
        outputs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_is_causal_and_composed_of_shared_multiplicative_and_convs(backend_name):
    x = floats(2, 5, D, seed=2)
    layer = _make('eval')
    weights, state = _init(layer, x)
    y, _ = layer.pure_fn(x, weights, state)
    changed = x.copy()
    changed[:, 3:] += 1.0
    y_changed, _ = layer.pure_fn(changed, weights, state)
    np.testing.assert_allclose(y_changed[:, :3], y[:, :3], atol=1e-6)
    assert not np.allclose(y_changed[:, 3:], y[:, 3:])
    # The same numbers from the parts: one MultiplicativeDense feeding three convolutions.
    mult_w, (q_w, k_w, v_w), _ = weights
    m, _ = tl.MultiplicativeDense(S, D).pure_fn(x, mult_w, ())
    q, k, v = (tl.LocallyConvDense(S, D // S, kernel_size=size, length_kernel_size=LK,
                                   mode='eval').pure_fn(m, w, ())[0]
               for size, w in ((3, q_w), (3, k_w), (1, v_w)))
    expected, _ = tl.DotProductCausalAttention(HEADS, mode='eval').pure_fn((q, k, v), (), ())
    np.testing.assert_allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize('output_layer_type', ['none', 'mult', 'conv'])
def test_parameter_count_matches_formula(output_layer_type):
    d, s, lk = 32, 8, 3
    layer = tl.MultiplicativeConvCausalAttention(d, n_heads=4, sparsity=s, length_kernel_size=lk,
                                                 output_layer_type=output_layer_type)
    weights, _ = _init(layer, floats(1, 2, d))
    d_module = d // s
    multiplicative = d * d // s + s * d + d
    convs = (lk * 3 * d_module * d_module + d_module) * 2 + lk * 1 * d_module * d_module + d_module
    output = {'none': 0, 'mult': multiplicative,
              'conv': lk * 3 * d_module * d_module + d_module}[output_layer_type]
    n_params = sum(np.size(w) for w in fastmath.tree_leaves(weights))
    assert n_params == multiplicative + convs + output
    assert n_params < 4 * d * d                    # dense Q, K, V, O projections


def test_errors():
    with pytest.raises(ValueError, match='MultiplicativeConvCausalAttention: d_feature=10 must be '
                                         'divisible by sparsity=4'):
        tl.MultiplicativeConvCausalAttention(10, n_heads=2, sparsity=4)
    with pytest.raises(ValueError, match='d_feature=6 must be divisible by sparsity=4'):
        tl.MultiplicativeConvCausalAttention(6, n_heads=4)          # sparsity defaults to n_heads
    with pytest.raises(ValueError, match='output_layer_type must be one of'):
        tl.MultiplicativeConvCausalAttention(8, n_heads=2, output_layer_type='multconv')
    with pytest.raises(ValueError, match='LocallyConvDenseBranch: length_kernel_size must be a positive'):
        tl.MultiplicativeConvCausalAttention(8, n_heads=2, length_kernel_size=0)
