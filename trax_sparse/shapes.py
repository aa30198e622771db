"""Shapes and dtypes of (nested) inputs, without touching their values.

Example:
    >>> import numpy as np
    >>> signature((np.zeros((2, 3), np.float32), np.zeros(4, np.int32)))
    (ShapeDtype{shape:(2, 3), dtype:float32}, ShapeDtype{shape:(4,), dtype:int32})
"""
from typing import Any, Sequence

import numpy as np


class ShapeDtype:
    """The shape and dtype of one array (an abstract array, like jax.ShapeDtypeStruct)."""

    __slots__ = ('shape', 'dtype')

    def __init__(self, shape: Sequence[int], dtype: Any = np.float32):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def replace(self, shape: Sequence[int] | None = None, dtype: Any = None) -> 'ShapeDtype':
        return ShapeDtype(self.shape if shape is None else shape,
                          self.dtype if dtype is None else dtype)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ShapeDtype) and self.shape == other.shape
                and self.dtype == other.dtype)

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype))

    def __repr__(self) -> str:
        return f'ShapeDtype{{shape:{self.shape}, dtype:{self.dtype}}}'


def signature(obj: Any) -> Any:
    """ShapeDtype of an array, or a tuple of them for a tuple/list of arrays."""
    if isinstance(obj, ShapeDtype):
        return obj
    if isinstance(obj, (tuple, list)):
        return tuple(signature(x) for x in obj)
    if not hasattr(obj, 'shape') or not hasattr(obj, 'dtype'):
        obj = np.asarray(obj)
    return ShapeDtype(obj.shape, obj.dtype)


def describe(obj: Any) -> str:
    """Short text for the shapes of (nested) arrays, e.g. 'float32[2,3], int32[4]'."""
    if isinstance(obj, (tuple, list)):
        return '(' + ', '.join(describe(x) for x in obj) + ')'
    if obj is None:
        return 'None'
    try:
        sig = signature(obj)
    except Exception:  # pragma: no cover - exotic objects
        return type(obj).__name__
    return f"{sig.dtype}[{','.join(str(d) for d in sig.shape)}]"
