"""Mixed precision: the compute dtypes, and the casts every layer uses to honour them.

The policy (docs/precision.md):
- Weights are created, trained and checkpointed in float32 (the master copy; the
  optimizer state too).
- A model's `compute_dtype` ('float32', 'bfloat16' or 'float16') is the dtype of its
  activations: its embeddings return their rows in it, and every layer computes in the
  dtype of its float inputs, casting each weight it reads to that dtype where it reads
  it (`cast_like`). So the gradient reaches the float32 weights in float32, and a
  weight stored in 16 bits for decoding is read as 16 bits and cast after the read
  (a gathered row, not the whole matrix).
- Statistics stay float32 (`float32_stats`): softmax and log-softmax (attention's
  max and sum, the loss), LayerNorm's mean and variance, SparseFF's controller softmax
  and Gumbel choice, LSH hashing, the SRU cell state; losses and metrics are float32.

bfloat16 on NumPy is `ml_dtypes.bfloat16` (the type JAX uses, so `np.dtype` names
agree on both backends).

Example:
    >>> import numpy as np
    >>> x = np.ones((2, 3), compute_dtype('bfloat16'))
    >>> w = np.ones((3, 4), np.float32)
    >>> str(cast_like(w, x).dtype), str(float32_stats(x).dtype)
    ('bfloat16', 'float32')
"""
from typing import Any

import numpy as np

COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def compute_dtype(name: Any) -> np.dtype:
    """The NumPy dtype of a compute dtype name ('float32', 'bfloat16', 'float16') or dtype.

    Example:
        >>> compute_dtype('float32')
        dtype('float32')
    """
    if name == 'bfloat16' or getattr(name, '__name__', None) == 'bfloat16':
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in COMPUTE_DTYPES:
        raise ValueError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}')
    return dtype


def check_compute_dtype(owner: str, name: Any) -> str:
    """`name` as one of COMPUTE_DTYPES, or a ValueError naming `owner` (a model or layer)."""
    try:
        return compute_dtype(name).name
    except ValueError:
        raise ValueError(f'{owner}: compute_dtype must be one of {COMPUTE_DTYPES}, got '
                         f'{name!r}') from None


def is_16bit(dtype: Any) -> bool:
    """True for the 16-bit float dtypes (bfloat16, float16)."""
    return np.dtype(dtype).name in ('bfloat16', 'float16')


def is_float(x: Any) -> bool:
    """True for an array (or ShapeDtype) of a floating dtype, bfloat16 included."""
    dtype = np.dtype(x.dtype)
    return dtype.kind == 'f' or dtype.name == 'bfloat16'


def cast_like(w: Any, x: Any) -> Any:
    """`w` in the dtype of the activations `x` (unchanged when it already is, or when
    either is not a float array: ids, masks, positions)."""
    if w.dtype == x.dtype or not (is_float(w) and is_float(x)):
        return w
    return w.astype(x.dtype)


def cast_all_like(weights: Any, x: Any) -> tuple:
    """`cast_like` on each array of a flat tuple of weights."""
    return tuple(cast_like(w, x) for w in weights)


def float32_stats(x: Any) -> Any:
    """`x` in float32 if it is a 16-bit float array (for statistics: sums, exponentials,
    normalizers); any other array unchanged."""
    return x.astype(np.float32) if is_16bit(x.dtype) else x


def stats_dtype(dtype: Any) -> np.dtype:
    """The dtype statistics of `dtype` activations are kept in: float32 for 16-bit floats,
    else `dtype` itself (float64 stays float64)."""
    return np.dtype(np.float32) if is_16bit(dtype) else np.dtype(dtype)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every float leaf of a tree (of arrays of either backend) cast to `dtype`; others kept.

    What decoding uses to store predict-mode weights (or caches) in 16 bits once.

    Example:
        >>> tree = (np.ones(2, np.float32), np.zeros((), np.int32))
        >>> [str(a.dtype) for a in cast_floats(tree, 'bfloat16')]
        ['bfloat16', 'int32']
    """
    from trax_sparse.fastmath import tree_map
    dtype = compute_dtype(dtype)
    return tree_map(lambda a: a.astype(dtype) if is_float(a) and a.dtype != dtype else a, tree)


__all__ = ['COMPUTE_DTYPES', 'cast_all_like', 'cast_floats', 'cast_like', 'check_compute_dtype',
           'compute_dtype', 'float32_stats', 'is_16bit', 'is_float', 'stats_dtype']
