"""fastmath.after_cotangent: values unchanged, the identity under jit and grad (its effect on
memory, flat in depth, is tests/layers/test_reversible.py's memory test)."""
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
