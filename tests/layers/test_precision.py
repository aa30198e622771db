"""The precision policy on every public layer (trax_sparse/precision.py, docs/precision.md).

For each registry case the layer is run on float32 inputs and on the same inputs in
bfloat16, with the same float32 (master) weights, in train, eval and predict, on NumPy and
on JAX (there both runs, and in train the bfloat16 gradient, in one compiled function).
The bfloat16 outputs equal the float32 ones within bfloat16 tolerance and are bfloat16
(losses and metrics: float32); weights initialized on bfloat16 inputs are float32; on JAX
the gradients reach the float32 weights in float32, finite.
"""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse.fastmath import tree_leaves, tree_map
from trax_sparse.precision import compute_dtype, is_float
from tests.layers.cases import all_cases

BF16 = compute_dtype('bfloat16')
CASES = all_cases()
FLOAT32_OUTPUTS = {'CrossEntropyLoss', 'Accuracy'}     # losses and metrics stay float32
RTOL = 3e-2                                            # of the output's largest magnitude
MODES = ('train', 'eval', 'predict')


def _to_bf16(tree):
    return tree_map(lambda a: a.astype(BF16) if is_float(a) else a, tree)


def _has_float(tree) -> bool:
    return any(is_float(a) for a in tree_leaves(tree))


def _expected_dtype(case, x):
    if case.name in FLOAT32_OUTPUTS:
        return np.dtype(np.float32)
    return BF16 if _has_float(x) or case.id.endswith('bfloat16') else None


def _float_sum(tree):
    return sum(a.astype(np.float32).sum() for a in tree_leaves(tree) if is_float(a))


def _runs(case, backend, x) -> dict:
    """mode -> (float32 outputs, bfloat16 outputs, weights made for bfloat16 inputs), and
    'grads': the gradient of the bfloat16 train outputs' sum (JAX, weighted layers) or None.
    On JAX every mode runs in one compiled function (with the same float32 weights)."""
    rng = np.array([0, 3], np.uint32)
    modes = [m for m in MODES if m != 'predict' or case.predict_ok]
    x16 = _to_bf16(x)
    with fastmath.use_backend(backend):
        layers, runs = {}, {}
        for mode in modes:
            layer = layers[mode] = case.make(mode)
            w, s = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
            w16_init, s16 = layer.pure_init(shapes.signature(x16),
                                            rng=fastmath.random.get_prng(0))
            runs[mode] = (w, s, s16, w16_init)
        weights = runs['train'][0]

        def outputs(w):
            return {mode: (layers[mode].pure_fn(x, w, runs[mode][1], rng)[0],
                           layers[mode].pure_fn(x16, w, runs[mode][2], rng)[0])
                    for mode in modes}

        grads = None
        if backend == 'numpy':
            ys = outputs(weights)
        elif tree_leaves(weights):
            def train_sum(w):
                ys = outputs(w)
                return _float_sum(ys['train'][1]), ys
            grads, ys = jax.jit(jax.grad(train_sum, has_aux=True))(weights)
        else:
            ys = jax.jit(outputs)(weights)
    result = {mode: ys[mode] + (runs[mode][3],) for mode in modes}
    result['grads'] = grads
    return result


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bfloat16_inputs_give_float32_outputs_within_bfloat16_tolerance(case, backend):
    x = case.inputs()
    expected = _expected_dtype(case, x)
    runs = _runs(case, backend, x)
    for mode in MODES:
        if mode not in runs:
            continue
        y32, y16, w16_init = runs[mode]
        grads = runs['grads'] if mode == 'train' else None
        where = f'{backend} {mode}'
        assert all(np.dtype(a.dtype) == np.float32 for a in tree_leaves(w16_init)
                   if is_float(a)), f'{where}: weights made on bfloat16 inputs must be float32'
        for a32, a16 in zip(tree_leaves(y32), tree_leaves(y16)):
            if not is_float(a32):
                np.testing.assert_array_equal(np.asarray(a16), np.asarray(a32))
                continue
            if expected is not None:
                assert np.dtype(a16.dtype) == expected, (where, a16.dtype, expected)
            a32, a16 = np.asarray(a32, np.float64), np.asarray(a16).astype(np.float64)
            scale = max(float(np.abs(a32).max(initial=0.0)), 1e-6)
            error = float(np.abs(a16 - a32).max(initial=0.0))
            assert error <= RTOL * scale, f'{where}: error {error:.3g} > {RTOL} x {scale:.3g}'
        for g in tree_leaves(grads) if grads is not None else ():
            assert g.dtype == np.float32, f'{where}: a gradient in {g.dtype}'
            assert np.all(np.isfinite(np.asarray(g))), f'{where}: a gradient is not finite'
