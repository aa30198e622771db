"""The NumPy backend: every fastmath operation in plain NumPy (forward only).

It is the reference for the JAX backend: same signatures, same numbers
(up to float rounding) and a keyed RNG that honours its keys. Gradients are
not available here and raise a clear error. Its array module (`fastmath.numpy`)
is numpy with the BLAS calls run under `fastmath.tuning().blas_threads` BLAS
threads (blas_threads.py).
"""
import math
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse import shapes
from trax_sparse.fastmath import tree
from trax_sparse.fastmath.blas_threads import BLAS_FUNCTIONS, limited_blas, limited_numpy
from trax_sparse.fastmath.numpy_16bit import float32_products, with_float32_products
# Large work shared among worker threads: row gathers, cache reads by heads, big products.
from trax_sparse.fastmath.numpy_parallel import (in_parts, parallel_matmul,  # noqa: F401
                                                 parallel_matmuls)

name = 'numpy'
# `fastmath.numpy` on this backend: numpy, BLAS threads limited, 16-bit products in float32.
array_module = with_float32_products(limited_numpy(), BLAS_FUNCTIONS)


class BackendError(RuntimeError):
    """An operation the current backend cannot do."""


def _needs_jax(what: str) -> Callable:
    def fail(*args, **kwargs):
        raise BackendError(
            f'fastmath.{what} needs the JAX backend: the NumPy backend computes forward passes '
            f"only. Wrap the call in `with fastmath.use_backend('jax'):` (pip install jax).")
    fail.__name__ = what
    return fail


grad = _needs_jax('grad')
value_and_grad = _needs_jax('value_and_grad')
vjp = _needs_jax('vjp')
custom_vjp = _needs_jax('custom_vjp')


def jit(fn: Callable, **unused_jit_kwargs) -> Callable:
    """Identity: NumPy runs eagerly."""
    return fn


def remat(fn: Callable, **unused_kwargs) -> Callable:
    """Identity: nothing to rematerialize without autodiff."""
    return fn


def stop_gradient(x):
    return x


def optimization_barrier(tree):
    """Identity (on JAX it also stops XLA from merging or moving computations across it)."""
    return tree


def is_concrete(x: Any) -> bool:
    """True when `x` holds values (always on NumPy; False for JAX tracers)."""
    return True


def erf(x):
    x = np.asarray(x)
    try:
        from scipy import special  # scipy comes with jax; optional here.
        return special.erf(x).astype(x.dtype)
    except ImportError:  # pragma: no cover - exercised only without scipy
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


def logsumexp(x, axis: int | Sequence[int] | None = None, keepdims: bool = False):
    x = np.asarray(x)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.zeros_like(m))
    with np.errstate(divide='ignore'):  # log(0) = -inf for all -inf rows, as in JAX.
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def stats_dtype(dtype: Any) -> Any:
    """float32 for 16-bit floats (statistics are kept in float32), else `dtype` itself."""
    return np.float32 if np.dtype(dtype).itemsize == 2 else dtype


def softmax_with_lse(scores, keep, fill, dtype):
    """(softmax of `scores` over the last axis, in `dtype`; its log-sum-exp [..., 1], float32).

    Entries where `keep` (bool, broadcastable; None = all) is False take the value `fill`
    (a scalar or an array broadcastable to scores) first. The statistics (max, sum, log)
    are computed in float32 whatever the scores' dtype (float64 stays float64). On JAX the
    gradient keeps only the returned probabilities (and `keep`): for 16-bit `dtype`, half
    the bytes of a float32 attention matrix.
    """
    return softmax_with_lse_in(np, scores, keep, fill, dtype)


def softmax_with_lse_in(xp: Any, scores, keep, fill, dtype):
    """`softmax_with_lse` in array module `xp` (shared with the JAX backend)."""
    wide = stats_dtype(scores.dtype)
    s = scores if scores.dtype == wide else scores.astype(wide)
    if keep is not None:
        s = xp.where(keep, s, xp.asarray(fill, dtype=wide))
    m = xp.max(s, axis=-1, keepdims=True)                                    # [..., 1]
    e = xp.exp(s - m)
    total = xp.sum(e, axis=-1, keepdims=True)
    probs = e / total
    return probs if probs.dtype == dtype else probs.astype(dtype), m + xp.log(total)


def _clamped_starts(shape, starts, sizes) -> list[int]:
    # Like lax.dynamic_slice: start indices are clamped so the slice fits.
    return [min(max(int(s), 0), d - z) for s, d, z in zip(starts, shape, sizes)]


def dynamic_slice(x, start_indices: Sequence, slice_sizes: Sequence[int]):
    starts = _clamped_starts(x.shape, start_indices, slice_sizes)
    return x[tuple(slice(s, s + z) for s, z in zip(starts, slice_sizes))]


def dynamic_update_slice(x, update, start_indices: Sequence):
    """Returns a copy of `x` with `update` written at `start_indices` (clamped)."""
    starts = _clamped_starts(x.shape, start_indices, update.shape)
    out = np.array(x, copy=True)
    out[tuple(slice(s, s + z) for s, z in zip(starts, update.shape))] = update
    return out


def update_cache(cache, update, start, axis: int):
    """Writes `update` into `cache` at `start` along `axis` IN PLACE; returns `cache`.

    The NumPy half of the predict-mode cache contract: the array passed in is
    the one returned, so a decoding step never copies its caches. A read-only
    array (e.g. a view of a JAX buffer) is copied once, then written.
    """
    if not (isinstance(cache, np.ndarray) and cache.flags.writeable):
        cache = np.array(cache, copy=True)
    start = int(start)
    if start < 0 or start + update.shape[axis] > cache.shape[axis]:
        raise ValueError(f'cache update of {update.shape[axis]} positions at {start} does not '
                         f'fit a cache of {cache.shape[axis]} positions (axis {axis})')
    index = [slice(None)] * cache.ndim
    index[axis] = slice(start, start + update.shape[axis])
    cache[tuple(index)] = update
    return cache


def permutation_index(perm, ndim: int):
    """perm [..., L] with trailing singleton axes up to `ndim` (a take_along_axis index)."""
    return perm.reshape(perm.shape + (1,) * (ndim - perm.ndim))


def take_permutation(x, perm, inverse, axis: int):
    """take_along_axis(x, perm, axis) where perm holds permutations along `axis`.

    perm gets trailing singleton axes up to x.ndim; x and perm broadcast against each
    other. `inverse` (the inverse permutations) is what the JAX gradient gathers by.
    """
    del inverse  # Only the gradient (JAX) needs it.
    return np.take_along_axis(x, permutation_index(perm, x.ndim), axis)


def rows_dot(xp: Any, table, rows, x):
    """take_rows_dot in array module `xp` (shared with the JAX backend); rows stored in
    another float dtype than x's (e.g. 16 bits) are cast after the read."""
    chosen = xp.take(table, rows, axis=0, mode='clip')                  # [T, k, d]
    chosen = chosen if chosen.dtype == x.dtype else chosen.astype(x.dtype)
    return xp.matmul(chosen, x[:, :, None])[..., 0]


def rows_weighted_sum(xp: Any, table, rows, h):
    """take_rows_weighted_sum in array module `xp` (shared with the JAX backend); rows are
    cast to h's dtype after the read."""
    chosen = xp.take(table, rows, axis=0, mode='clip')                  # [T, k, d]
    chosen = chosen if chosen.dtype == h.dtype else chosen.astype(h.dtype)
    return xp.matmul(h[:, None, :], chosen)[:, 0, :]


@limited_blas
def take_rows_dot(table, rows, x):
    """out[t, j] = table[rows[t, j]] · x[t]: table [R, d], rows [T, k] int, x [T, d] -> [T, k].

    Reads only the chosen rows (clipped into range). Sparse FF's predict path, step 1.
    """
    return rows_dot(array_module, table, rows, x)


@limited_blas
def take_rows_weighted_sum(table, rows, h):
    """out[t] = Σ_j h[t, j] · table[rows[t, j]]: table [R, d], rows, h [T, k] -> [T, d].

    Reads only the chosen rows (clipped into range). Sparse FF's predict path, step 2.
    """
    return rows_weighted_sum(array_module, table, rows, h)


def after_cotangent(tree, ct):
    """`tree` unchanged; on JAX, also computed only once `ct` is (eager NumPy runs in order)."""
    del ct
    return tree


def scan(f: Callable, init, xs, length: int | None = None, reverse: bool = False):
    """lax.scan semantics: f(carry, x) -> (carry, y); returns (carry, stacked ys)."""
    leaves = tree.tree_leaves(xs)
    n = length if length is not None else leaves[0].shape[0]
    carry, ys = init, []
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        carry, y = f(carry, tree.tree_map(lambda a: a[i], xs))
        ys.append(y)
    if reverse:
        ys.reverse()
    if not ys:
        return carry, None
    return carry, tree.tree_map(lambda *a: np.stack(a), *ys)


def fori_loop(lower: int, upper: int, body: Callable, init):
    val = init
    for i in range(int(lower), int(upper)):
        val = body(i, val)
    return val


def cond(pred, true_fn: Callable, false_fn: Callable, *operands):
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def sort_key_val(keys, values, dimension: int = -1):
    """Sorts `keys` along `dimension` (stable) and permutes `values` alike."""
    order = np.argsort(keys, axis=dimension, kind='stable')
    return (np.take_along_axis(keys, order, axis=dimension),
            np.take_along_axis(values, order, axis=dimension))


def top_k(x, k: int):
    """Largest k entries along the last axis, descending (ties: lower index first).

    O(n + k log k): a partition picks the k largest, only they are sorted.
    """
    n = x.shape[-1]
    if k < n:
        # The k-th largest value; everything above it is in, ties fill up by index.
        kth = -np.partition(-x, k - 1, axis=-1)[..., k - 1:k]
        above = x > kth
        tie_rank = np.cumsum(x == kth, axis=-1)
        n_needed = k - above.sum(-1, keepdims=True)
        keep = above | ((x == kth) & (tie_rank <= n_needed))
        candidates = np.nonzero(keep.reshape(-1, n))[1].reshape(x.shape[:-1] + (k,))
        values = np.take_along_axis(x, candidates, axis=-1)
        order = np.take_along_axis(candidates, np.argsort(-values, axis=-1, kind='stable'),
                                   axis=-1)
    else:
        order = np.argsort(-x, axis=-1, kind='stable')[..., :k]
    return np.take_along_axis(x, order, axis=-1), order.astype(np.int32)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of 'SAME' convolution along one axis (as in XLA)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


@limited_blas
@float32_products
def conv(x, kernel, strides: Sequence[int] | None = None, padding: str = 'VALID'):
    """N-d convolution: x [B, *spatial, C_in], kernel [*window, C_in, C_out]."""
    n_spatial = kernel.ndim - 2
    strides = tuple(strides or (1,) * n_spatial)
    window = kernel.shape[:n_spatial]
    if padding == 'SAME':
        pads = [same_padding(x.shape[1 + i], window[i], strides[i]) for i in range(n_spatial)]
        x = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    elif padding != 'VALID':
        raise ValueError(f"conv: padding must be 'VALID' or 'SAME', got {padding!r}")
    axes = tuple(range(1, 1 + n_spatial))
    patches = np.lib.stride_tricks.sliding_window_view(x, window, axis=axes)
    patches = patches[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
    # patches: [B, *out_spatial, C_in, *window]; contract C_in and the window.
    k = np.moveaxis(kernel, n_spatial, 0)                  # [C_in, *window, C_out]
    return np.tensordot(patches, k, axes=(list(range(1 + n_spatial, 2 + 2 * n_spatial)),
                                          list(range(0, 1 + n_spatial))))


def abstract_eval(fn: Callable) -> Callable:
    """fn over ShapeDtype trees -> output ShapeDtype tree (runs `fn` on zeros)."""
    def wrapped(*sigs):
        args = tree.tree_map(lambda s: np.zeros(s.shape, s.dtype), sigs)
        return tree.tree_map(shapes.signature, fn(*args))
    return wrapped


def device_count() -> int:
    return 1


_MASK32 = 0xFFFFFFFF
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: Sequence[int], x0: Sequence[int], x1: Sequence[int]) -> tuple[list, list]:
    """The Threefry-2x32 block cipher (20 rounds) on counter pairs (x0[i], x1[i]).

    The same function as JAX's `threefry2x32`, so keys split or folded here are
    bit-identical to `jax.random.split` / `fold_in`. Plain Python integers:
    a split of a few keys costs microseconds (no Generator is built).
    """
    k1, k2 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    ks = (k1, k2, k1 ^ k2 ^ 0x1BD11BDA)
    out0, out1 = [], []
    for a, b in zip(x0, x1):
        a, b = (int(a) + ks[0]) & _MASK32, (int(b) + ks[1]) & _MASK32
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                a = (a + b) & _MASK32
                b = ((b << r) | (b >> (32 - r))) & _MASK32
                b ^= a
            a = (a + ks[(i + 1) % 3]) & _MASK32
            b = (b + ks[(i + 2) % 3] + i + 1) & _MASK32
        out0.append(a)
        out1.append(b)
    return out0, out1


class random:  # noqa: N801 - a namespace, like jax.random.
    """Keyed RNG: a key is uint32[2]; the same key always gives the same numbers.

    `split` and `fold_in` equal JAX's bit for bit (Threefry); the draws
    (uniform, normal, ...) use NumPy's PCG64 seeded by the key.
    """

    @staticmethod
    def _generator(key, *tags: int) -> np.random.Generator:
        k = np.asarray(key, dtype=np.uint32).reshape(-1)
        seed = np.random.SeedSequence([int(v) for v in k] + [int(t) & 0xFFFFFFFF for t in tags])
        return np.random.Generator(np.random.PCG64(seed))

    @staticmethod
    def get_prng(seed: int) -> np.ndarray:
        seed = int(seed)
        return np.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], dtype=np.uint32)

    @staticmethod
    def split(key, num: int = 2) -> np.ndarray:
        key = np.asarray(key).reshape(-1)
        bits0, bits1 = threefry2x32(key, [0] * int(num), range(int(num)))
        return np.array([bits0, bits1], dtype=np.uint32).T.reshape(int(num), 2)

    @staticmethod
    def fold_in(key, data: int) -> np.ndarray:
        key = np.asarray(key).reshape(-1)
        bits0, bits1 = threefry2x32(key, [0], [int(data) & _MASK32])
        return np.array([bits0[0], bits1[0]], dtype=np.uint32)

    @staticmethod
    def uniform(key, shape=(), dtype=np.float32, minval=0.0, maxval=1.0) -> np.ndarray:
        u = random._generator(key, 0).random(tuple(shape), dtype=np.float64)
        return (minval + (maxval - minval) * u).astype(dtype)

    @staticmethod
    def normal(key, shape=(), dtype=np.float32) -> np.ndarray:
        return random._generator(key, 0).standard_normal(tuple(shape)).astype(dtype)

    @staticmethod
    def bernoulli(key, p=0.5, shape=()) -> np.ndarray:
        return random.uniform(key, shape, np.float64) < p

    @staticmethod
    def gumbel(key, shape=(), dtype=np.float32) -> np.ndarray:
        tiny = np.finfo(np.float32).tiny
        u = random.uniform(key, shape, np.float64, minval=tiny, maxval=1.0)
        return (-np.log(-np.log(u))).astype(dtype)

    @staticmethod
    def randint(key, shape=(), minval=0, maxval=None, dtype=np.int32) -> np.ndarray:
        return random._generator(key, 0).integers(minval, maxval, size=tuple(shape)).astype(dtype)

    @staticmethod
    def categorical(key, logits, axis: int = -1) -> np.ndarray:
        g = random.gumbel(key, np.shape(logits), np.float64)
        return np.argmax(np.asarray(logits) + g, axis=axis).astype(np.int32)
