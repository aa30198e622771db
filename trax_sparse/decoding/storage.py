"""Decoding with 16-bit weights and K/V caches: what is stored in 16 bits, chosen once.

Batch-1 decoding reads every weight it uses once per token, so storing weights in 16 bits
halves the bytes a step reads. The compute dtype stays the model's (float32 unless built
otherwise): a layer casts each weight it reads to its activations' dtype where it reads
it (`precision.cast_like`), so a gathered row is widened after the read and a dense
matrix is widened whole (docs/precision.md, "Decoding in 16 bits").

weights_dtype (`store_weights`, done once before decoding):
- 'float32': the weights as trained.
- 'bfloat16' / 'float16': every float weight in 16 bits (`precision.cast_floats`).
- 'gathered_bfloat16': only the weights a step reads a few rows of (`Layer.gathered_weights`:
  embedding and position tables, SparseFF's W1ᵀ / W2 rows) in bfloat16; the matrices of
  dense products stay float32.
- 'auto': 'bfloat16' on a GPU or TPU; 'float32' on a CPU. Measured there (benchmarks/RESULTS.md,
  "Decoding in 16 bits"): full bfloat16 storage made the 800M decoder 1.8-5.4x slower (no fast
  16-bit matrix-vector product on XLA:CPU or NumPy: dense matrices are widened every step),
  and 'gathered_bfloat16' gained nothing at 800M (0.98-1.05x; its rows are 1-5% of the bytes),
  so the CPU default changes nothing. 'gathered_bfloat16' pays for large sparse models on
  JAX (a 17B SparseFF block: 0.67x the bytes, 0.69x the time).
cache_dtype (`with_cache_dtype`, on the fresh predict state): None keeps the compute
dtype; 'bfloat16' / 'float16' stores the attention K/V caches (`Layer.attention_caches`)
in 16 bits. Cached encoder outputs, positions and recurrent statistics keep theirs.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> model = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
    >>> with fastmath.use_backend('numpy'):
    ...     weights, _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    ...     stored = store_weights(model, weights, 'gathered_bfloat16')
    >>> [str(w.dtype) for w in fastmath.tree_leaves(stored)]      # the table; Dense's w, b
    ['bfloat16', 'float32', 'float32']
"""
from typing import Any

import numpy as onp

from trax_sparse import fastmath, precision, shapes
from trax_sparse.layers.base import Layer

WEIGHTS_DTYPES = ('auto', 'float32', 'bfloat16', 'float16', 'gathered_bfloat16')
CACHE_DTYPES = ('float32', 'bfloat16', 'float16')
GATHERED_PREFIX = 'gathered_'


def check_weights_dtype(weights_dtype: str, flag: str = 'weights_dtype') -> str:
    """`weights_dtype` if it is one of WEIGHTS_DTYPES, else a ValueError naming `flag`.

        >>> check_weights_dtype('bf16')
        Traceback (most recent call last):
        ...
        ValueError: weights_dtype='bf16': expected one of auto, float32, bfloat16, float16, gathered_bfloat16
    """
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f'{flag}={weights_dtype!r}: expected one of {", ".join(WEIGHTS_DTYPES)}')
    return weights_dtype


def check_cache_dtype(cache_dtype: str | None, flag: str = 'cache_dtype') -> str | None:
    """`cache_dtype` (None: the compute dtype) if valid, else a ValueError naming `flag`."""
    if cache_dtype is not None and cache_dtype not in CACHE_DTYPES:
        raise ValueError(f'{flag}={cache_dtype!r}: expected one of {", ".join(CACHE_DTYPES)} '
                         f'(or none: the compute dtype)')
    return cache_dtype


def resolve_weights_dtype(weights_dtype: str, platform: str | None = None) -> str:
    """The storage 'auto' stands for on `platform` (default: the live backend's device).

        >>> resolve_weights_dtype('auto', 'cpu'), resolve_weights_dtype('auto', 'gpu')
        ('float32', 'bfloat16')
    """
    check_weights_dtype(weights_dtype)
    if weights_dtype != 'auto':
        return weights_dtype
    platform = device_platform() if platform is None else platform
    return 'float32' if platform == 'cpu' else 'bfloat16'


def device_platform() -> str:
    """The platform the live backend computes on: 'cpu' for NumPy, else the platform of the
    device a JAX array lands on ('cpu', 'gpu', 'tpu')."""
    if not fastmath.is_jax():
        return 'cpu'
    probe = fastmath.to_backend(onp.zeros((), onp.float32))
    return str(next(iter(probe.devices())).platform)


# Measured per-token cost of full bfloat16 storage over float32 on the 2-core CPU, the 800M
# decoder's variants at 8 layers, same run (benchmarks/RESULTS.md, "Decoding in 16 bits").
CPU_16BIT_COST = ('1.8-3.8x the float32 time per token on NumPy, 3.2-5.4x on JAX (800M '
                  'decoder, benchmarks/RESULTS.md)')


def storage_note(weights_dtype: str | None, platform: str | None = None) -> str | None:
    """A note for a user who stores dense matrices in 16 bits on a CPU (None otherwise): the
    memory is halved, the step is slower there (no fast 16-bit matrix-vector product).

        >>> storage_note('gathered_bfloat16', 'cpu') is None, storage_note('bfloat16', 'gpu')
        (True, None)
    """
    if weights_dtype is None or resolve_weights_dtype(weights_dtype, platform) not in (
            'bfloat16', 'float16'):
        return None
    if (device_platform() if platform is None else platform) != 'cpu':
        return None
    return (f'weights_dtype={weights_dtype!r} stores the dense matrices in 16 bits: half the '
            f'memory, but a CPU widens them at every step (measured: {CPU_16BIT_COST}); '
            f"'auto' keeps them float32 on a CPU")


def store_weights(model: Layer, weights: Any, weights_dtype: str | None) -> Any:
    """`weights` (of predict-mode `model`) stored as `weights_dtype` says; None keeps them.

    The cast happens once, here: decoding then reads the stored arrays every step.
    """
    if weights_dtype is None:
        return weights
    storage = resolve_weights_dtype(weights_dtype)
    if storage == 'float32':
        return precision.cast_floats(weights, 'float32')
    if not storage.startswith(GATHERED_PREFIX):
        return precision.cast_floats(weights, storage)
    return cast_chosen(weights, model.gathered_weights(weights), storage[len(GATHERED_PREFIX):])


def with_cache_dtype(model: Layer, state: Any, cache_dtype: str | None) -> Any:
    """The predict `state` with its attention K/V caches in `cache_dtype` (None: unchanged)."""
    if check_cache_dtype(cache_dtype) is None:
        return state
    return cast_chosen(state, model.attention_caches(state), cache_dtype)


def cast_chosen(tree: Any, chosen: tuple, dtype: Any) -> Any:
    """`tree` with the float leaves that ARE arrays of `chosen` (by identity) cast to `dtype`
    (arrays of either backend, or ShapeDtypes: a state signature).

    The hooks return the leaves themselves, so a leaf equal in value but elsewhere in the
    tree (a cached encoder output of zeros) is never mistaken for one of them.
    """
    dtype = precision.compute_dtype(dtype)
    ids = {id(a) for a in chosen}

    def cast(a: Any) -> Any:
        if id(a) not in ids or not precision.is_float(a) or a.dtype == dtype:
            return a
        return a.replace(dtype=dtype) if isinstance(a, shapes.ShapeDtype) else a.astype(dtype)
    return fastmath.tree_map(cast, tree)


def stored_dtypes(tree: Any) -> dict:
    """{dtype name: bytes} of the float leaves of `tree` (what a decoding stores).

        >>> import numpy as np
        >>> stored_dtypes((np.ones(3, np.float32), np.zeros((), np.int32)))
        {'float32': 12}
    """
    totals: dict = {}
    for a in fastmath.tree_leaves(tree):
        if precision.is_float(a):
            name = str(a.dtype)
            totals[name] = totals.get(name, 0) + int(a.size) * a.dtype.itemsize
    return totals


__all__ = ['CACHE_DTYPES', 'WEIGHTS_DTYPES', 'cast_chosen', 'check_cache_dtype',
           'check_weights_dtype', 'device_platform', 'resolve_weights_dtype', 'storage_note', 'store_weights', 'stored_dtypes',
           'with_cache_dtype']
