"""The JAX backend: the only module of trax_sparse that imports jax.

Same names and signatures as numpy_backend; adds autodiff, jit and devices.
"""
from typing import Any, Callable, Sequence

import jax
import jax.numpy as np  # noqa: F401 - exposed as the backend's array module.
import numpy as onp
from jax import lax

from trax_sparse import shapes
from trax_sparse.fastmath import numpy_backend, tree

name = 'jax'

jit = jax.jit
grad = jax.grad
value_and_grad = jax.value_and_grad
vjp = jax.vjp
custom_vjp = jax.custom_vjp
stop_gradient = lax.stop_gradient
dynamic_slice = lax.dynamic_slice
dynamic_update_slice = lax.dynamic_update_slice
fori_loop = lax.fori_loop
cond = lax.cond
top_k = lax.top_k
erf = jax.scipy.special.erf
same_padding = numpy_backend.same_padding


def remat(fn: Callable, **kwargs) -> Callable:
    return jax.checkpoint(fn, **kwargs)


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def logsumexp(x, axis: int | Sequence[int] | None = None, keepdims: bool = False):
    return jax.scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)


def scan(f: Callable, init, xs, length: int | None = None, reverse: bool = False):
    return lax.scan(f, init, xs, length=length, reverse=reverse)


def sort_key_val(keys, values, dimension: int = -1):
    return lax.sort_key_val(keys, values, dimension=dimension)


def conv(x, kernel, strides: Sequence[int] | None = None, padding: str = 'VALID'):
    """N-d convolution: x [B, *spatial, C_in], kernel [*window, C_in, C_out]."""
    n = kernel.ndim - 2
    if padding not in ('VALID', 'SAME'):
        raise ValueError(f"conv: padding must be 'VALID' or 'SAME', got {padding!r}")
    # Channel-last numbers for any rank: lhs (0, C, spatial...), rhs (O, I, spatial...).
    lhs_spec = (0, n + 1) + tuple(range(1, n + 1))
    rhs_spec = (n + 1, n) + tuple(range(n))
    dn = lax.ConvDimensionNumbers(lhs_spec, rhs_spec, lhs_spec)
    return lax.conv_general_dilated(x, kernel, tuple(strides or (1,) * n), padding,
                                    dimension_numbers=dn)


def abstract_eval(fn: Callable) -> Callable:
    """fn over ShapeDtype trees -> output ShapeDtype tree, via jax.eval_shape (no compute)."""
    def wrapped(*sigs):
        structs = tree.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), sigs)
        out = jax.eval_shape(fn, *structs)
        return jax.tree_util.tree_map(lambda s: shapes.ShapeDtype(s.shape, s.dtype), out)
    return wrapped


def zero_cotangent(x):
    """A zero cotangent for a primal value (float0 for integer and bool arrays)."""
    x = np.asarray(x) if not hasattr(x, 'dtype') else x
    if np.issubdtype(x.dtype, np.inexact):
        return np.zeros_like(x)
    return onp.zeros(x.shape, dtype=jax.dtypes.float0)


def device_count() -> int:
    return jax.device_count()


class random:  # noqa: N801 - a namespace, like jax.random.
    """jax.random with raw uint32[2] keys (interchangeable with the NumPy backend's)."""

    get_prng = staticmethod(jax.random.PRNGKey)
    fold_in = staticmethod(jax.random.fold_in)
    normal = staticmethod(jax.random.normal)
    gumbel = staticmethod(jax.random.gumbel)
    categorical = staticmethod(jax.random.categorical)

    @staticmethod
    def split(key, num: int = 2):
        return jax.random.split(key, num)

    @staticmethod
    def uniform(key, shape=(), dtype=np.float32, minval=0.0, maxval=1.0):
        return jax.random.uniform(key, tuple(shape), dtype, minval, maxval)

    @staticmethod
    def bernoulli(key, p=0.5, shape=()):
        return jax.random.bernoulli(key, p, tuple(shape))

    @staticmethod
    def randint(key, shape=(), minval=0, maxval=None, dtype=np.int32):
        return jax.random.randint(key, tuple(shape), minval, maxval, dtype)
