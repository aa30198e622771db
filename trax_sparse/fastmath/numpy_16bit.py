"""Products of 16-bit floats on NumPy: computed in float32, returned in the inputs' dtype.

NumPy has no 16-bit BLAS: a bfloat16 (ml_dtypes) `matmul` runs a slow loop and returns
float32, and `einsum` refuses bfloat16. The NumPy backend's products (its array
module's BLAS functions, `parallel_matmul`, `take_rows_*`, `conv`) therefore cast
16-bit operands to float32, multiply with BLAS, and round the result to the dtype the
operands promote to (bfloat16 x bfloat16 -> bfloat16; bfloat16 x float32 -> float32),
so layer code reads the same on both backends. A product of float32 operands costs one
dtype check per operand.

Example:
    >>> import numpy as np, ml_dtypes
    >>> matmul = float32_products(np.matmul)
    >>> a = np.ones((2, 3), ml_dtypes.bfloat16)
    >>> str(matmul(a, a.T).dtype), str(matmul(a, np.ones((3, 1), np.float32)).dtype)
    ('bfloat16', 'float32')
"""
import functools
from typing import Any, Callable

import numpy as np

_SIXTEEN_BIT = frozenset(('bfloat16', 'float16'))


def _is_16bit(x: Any) -> bool:
    dtype = getattr(x, 'dtype', None)
    return dtype is not None and dtype.itemsize == 2 and dtype.name in _SIXTEEN_BIT


def float32_products(fn: Callable) -> Callable:
    """`fn` (a NumPy product) with 16-bit float array arguments computed in float32."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not any(_is_16bit(a) for a in args):
            return fn(*args, **kwargs)
        arrays = [a for a in args if hasattr(a, 'dtype')]
        out_dtype = np.result_type(*[a.dtype for a in arrays])
        widened = [a.astype(np.float32) if _is_16bit(a) else a for a in args]
        return np.asarray(fn(*widened, **kwargs)).astype(out_dtype, copy=False)
    return call


def with_float32_products(module: Any, names: tuple[str, ...]) -> Any:
    """`module` with its functions `names` wrapped by `float32_products` (in place)."""
    for name in names:
        setattr(module, name, float32_products(getattr(module, name)))
    return module


__all__ = ['float32_products', 'with_float32_products']
