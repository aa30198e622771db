"""The JAX backend (this package, with its devices.py): the only place trax_sparse imports jax.

Same names and signatures as numpy_backend; adds autodiff, jit and devices.
"""
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as np  # noqa: F401 - exposed as the backend's array module.
import numpy as onp
from jax import lax
# The fastmath operations that are JAX's own, under the names numpy_backend gives them.
from jax import custom_vjp, grad, jit, value_and_grad, vjp  # noqa: F401
from jax.lax import (cond, dynamic_slice, dynamic_update_slice, fori_loop,  # noqa: F401
                     optimization_barrier, stop_gradient, top_k)
from jax.scipy.special import erf  # noqa: F401

from trax_sparse import shapes
from trax_sparse.fastmath import numpy_backend, numpy_parallel, tree
from trax_sparse.fastmath.numpy_backend import same_padding  # noqa: F401
from trax_sparse.fastmath.settings import tuning
# Devices, meshes, sharding and multi-host (devices.py), under the backend's names.
from trax_sparse.fastmath.jax_backend.devices import (  # noqa: F401
    tree_flatten, tree_unflatten, replicate, shard_batch, make_mesh, named_shardings,
    replicated, put_sharded, memory_analysis, saved_residual_bytes, sharding_device_count,
    to_host, block_until_ready, distributed_initialize, process_index, process_count,
    process_any, set_debug_options, array_pieces, process_allgather, put_from_callback)

name = 'jax'
array_module = np   # `fastmath.numpy` on this backend: jax.numpy


def update_cache(cache, update, start, axis: int):
    """Writes `update` into `cache` at `start` along `axis`: a functional update.

    Under jit with the cache donated (`donate_argnums`), XLA writes in place.
    """
    starts = [0] * cache.ndim
    starts[axis] = start
    return lax.dynamic_update_slice(cache, update.astype(cache.dtype), starts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _take_permutation(x, perm, inverse, axis):
    return np.take_along_axis(x, numpy_backend.permutation_index(perm, x.ndim), axis)


def _take_permutation_fwd(x, perm, inverse, axis):
    return _take_permutation(x, perm, inverse, axis), (perm, inverse)


def _take_permutation_bwd(axis, residual, ct):
    perm, inverse = residual
    # out[i] = x[perm[i]] along axis  =>  x_ct[j] = ct[inverse[j]].
    x_ct = np.take_along_axis(ct, numpy_backend.permutation_index(inverse, ct.ndim), axis)
    return x_ct, zero_cotangent(perm), zero_cotangent(inverse)


_take_permutation.defvjp(_take_permutation_fwd, _take_permutation_bwd)


def take_permutation(x, perm, inverse, axis: int):
    """take_along_axis(x, perm, axis) for permutations perm; its gradient gathers by `inverse`.

    JAX would differentiate the gather into a scatter-add into a zero buffer; a
    permutation's cotangent is the cotangent gathered by the inverse permutation
    (no scatter, no zero buffer: XLA:CPU allocated each layer's zero buffer at the start
    of a training step and kept it until that layer's backward).
    """
    axis = int(axis) % x.ndim
    index_shape = numpy_backend.permutation_index(perm, x.ndim).shape
    # x broadcast against perm first (autodiff sums it back), so the custom part is same-shape.
    shape = tuple(a if i == axis else max(a, b)
                  for i, (a, b) in enumerate(zip(x.shape, index_shape)))
    return _take_permutation(np.broadcast_to(x, shape), perm, inverse, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _softmax_with_lse(scores, keep, fill, dtype, scores_dtype):
    return numpy_backend.softmax_with_lse_in(np, scores, keep, fill, dtype)


def _softmax_with_lse_fwd(scores, keep, fill, dtype, scores_dtype):
    probs, lse = numpy_backend.softmax_with_lse_in(np, scores, keep, fill, dtype)
    return (probs, lse), (probs, keep)


def _softmax_with_lse_bwd(dtype, scores_dtype, residual, cotangent):
    probs, keep = residual
    probs_ct, lse_ct = cotangent
    wide = numpy_backend.stats_dtype(scores_dtype)
    p, g = probs.astype(wide), probs_ct.astype(wide)
    # d(probs)/d(scores) and d(lse)/d(scores) = probs, from the probabilities alone.
    scores_ct = p * (g - np.sum(g * p, axis=-1, keepdims=True) + lse_ct.astype(wide))
    if keep is not None:
        scores_ct = np.where(keep, scores_ct, 0.0)          # filled entries are constants
    return scores_ct.astype(scores_dtype), None, None


_softmax_with_lse.defvjp(_softmax_with_lse_fwd, _softmax_with_lse_bwd)


def softmax_with_lse(scores, keep, fill, dtype):
    """(softmax in `dtype`, log-sum-exp) of scores (see numpy_backend); its gradient keeps
    only the probabilities and `keep`, not float32 copies of the scores."""
    return _softmax_with_lse(scores, keep, fill, np.dtype(dtype), np.dtype(scores.dtype))


def _row_parts(rows, table) -> list:
    """Column ranges of rows [T, k] gathered from table [R, d]: `tuning().jax_gather_parts`
    of them if large (XLA:CPU runs independent gathers concurrently)."""
    n_bytes = rows.size * table.shape[-1] * table.dtype.itemsize
    return numpy_parallel.column_slices(rows.shape[-1], n_bytes, tuning().jax_gather_parts)


def take_rows_dot(table, rows, x):
    """out[t, j] = table[rows[t, j]] · x[t] (see numpy_backend); large calls as 4 gathers."""
    return np.concatenate([numpy_backend.rows_dot(np, table, rows[:, columns], x)
                           for columns in _row_parts(rows, table)], axis=1)


def take_rows_weighted_sum(table, rows, h):
    """out[t] = Σ_j h[t, j] · table[rows[t, j]] (see numpy_backend); large calls in 4 parts."""
    return sum(numpy_backend.rows_weighted_sum(np, table, rows[:, columns], h[:, columns])
               for columns in _row_parts(rows, table))


def in_parts(fn, n_columns: int, n_bytes: int) -> list:
    """[fn(all columns)] (see numpy_parallel): XLA runs the work inside on its own threads."""
    return [fn(slice(0, n_columns))]


def parallel_matmul(a, b):
    """a [..., m, k] @ b [k, n]: XLA already spreads a dot over its threads."""
    return np.matmul(a, b)


def parallel_matmuls(pairs):
    """[a @ b for a, b in pairs]: XLA schedules the dots on its own threads."""
    return [np.matmul(a, b) for a, b in pairs]


def _first_float(tree_):
    for leaf in jax.tree_util.tree_leaves(tree_):
        if hasattr(leaf, 'dtype') and np.issubdtype(leaf.dtype, np.floating) and leaf.size:
            return np.reshape(leaf, (-1,))[0]
    return None


def _unchanged(x):
    if hasattr(x, 'dtype') and np.issubdtype(x.dtype, np.floating):
        return x * np.asarray(1, x.dtype)
    return x


def after_cotangent(tree_, ct):
    """`tree_` unchanged, but computed only once `ct` is, and materialized: a `lax.cond`.

    For a backward recompute (a reversible layer's): XLA:CPU removes
    `lax.optimization_barrier` before scheduling, then hoists each layer's recompute
    into the forward pass and fuses the chain of reconstructed inputs across layers,
    keeping every layer's terms alive: memory grows with depth again. A cond whose
    predicate reads one element of `ct` is a data dependence no pass removes, and no
    fusion crosses it. Both branches return the values (the second as x * 1, so the
    branches differ and the cond is not folded into a select).
    """
    anchor = _first_float(ct)
    if anchor is None:
        return tree_
    return lax.cond(anchor == 0, lambda t: t, lambda t: jax.tree_util.tree_map(_unchanged, t),
                    tree_)


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

