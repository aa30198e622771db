"""fastmath.after_cotangent: values unchanged; a reversible stack's gradient memory flat in depth."""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from trax_sparse import fastmath


@pytest.mark.parametrize('backend_name', ['numpy', 'jax'])
def test_values_unchanged_for_every_dtype(backend_name):
    tree = (np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int32),
            np.array([0, 7], np.uint32), np.array([True, False]))
    for ct in (np.full((2,), 3.0, np.float32), np.zeros((2,), np.float32),
               np.array([np.nan, 1.0], np.float32), (np.ones(3, np.int32),)):
        with fastmath.use_backend(backend_name):
            out = fastmath.after_cotangent(tree, ct)
        for a, b in zip(out, tree):
            assert np.asarray(a).dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), b)


def test_under_jit_and_grad_it_is_the_identity():
    x = np.arange(5, dtype=np.float32)

    def f(x, ct):
        return (fastmath.after_cotangent(x, ct) ** 2).sum()
    with fastmath.use_backend('jax'):
        value, grad = jax.jit(jax.value_and_grad(f))(x, np.ones(2, np.float32))
    assert float(value) == float((x ** 2).sum())
    np.testing.assert_array_equal(np.asarray(grad), 2 * x)


def _memory_benchmark():
    path = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'reversible_memory.py'
    spec = importlib.util.spec_from_file_location('reversible_memory', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reversible_gradient_memory_does_not_grow_with_depth():
    # Without after_cotangent, XLA:CPU hoisted the recomputes and fused the reconstruction
    # chain across blocks (docs/RESULTS.md, section 2); at this size one [B, L, d] buffer
    # more for 8 more blocks, in the 6+6 Terraformer ~3 per block.
    size = dict(batch=2, length=512, d_model=64, d_ff=128)
    activation = size['batch'] * size['length'] * size['d_model'] * 4
    bench = _memory_benchmark()
    temp = {depth: bench.grad_temp_bytes(depth, True, **size) for depth in (2, 10)}
    assert temp[10] - temp[2] < activation // 4, temp
