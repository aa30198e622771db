"""The BLAS threads of the library's own NumPy calls: `limited_blas`, `blas_scope`.

NumPy's BLAS (OpenBLAS in the wheels) starts threads of its own for a product, one per
core by default, on top of the NumPy backend's worker threads (numpy_parallel.py). On a
busy machine a small product then waits for its BLAS threads to be scheduled: SparseFF's
predict step at d 2048, d_ff 16384, N 64 took 36 ms instead of 0.5 ms with one BLAS
thread while another process kept a core busy. So the NumPy backend's array module
(`fastmath.numpy` on NumPy) and its large-work ops run their BLAS calls with
`fastmath.tuning().blas_threads` BLAS threads (1 by default; None leaves BLAS alone),
set through threadpoolctl, and put the process's setting back when the outermost library
call returns: NumPy code outside the library keeps its BLAS threads.

The count is a process-wide setting of the BLAS library, so it is changed by the
outermost library call of any thread and restored when the last one returns (a count
under a lock). Inside, a wrapped call costs one global read (~0.1 us over the plain
call); an outermost one reads and sets the count (~1-2 us; docs/performance.md). Wrap a
whole decoding run in `blas_scope()` to pay that once.

Example:
    >>> import numpy as np
    >>> product = limited_blas(np.matmul)
    >>> product(np.ones((1, 2)), np.ones((2, 3))).shape
    (1, 3)
"""
import contextlib
import functools
import sys
import threading
import types
from typing import Any, Callable, Iterator

import numpy as np

from trax_sparse.fastmath.settings import tuning

# The numpy functions that call BLAS (the array module of the NumPy backend wraps them).
BLAS_FUNCTIONS = ('matmul', 'dot', 'vdot', 'inner', 'tensordot', 'einsum')

_lock = threading.Lock()
_depth = 0                      # library calls running now (all threads)
_restore: list = []             # (set_num_threads, count) of each BLAS library, to restore
# (modules loaded when scanned, BLAS libraries, their (get, set) thread-count functions)
_scan: tuple[int, list, list] | None = None


def _scanned() -> tuple[int, list, list]:
    """The loaded BLAS libraries (NumPy's, and e.g. SciPy's): scanned again only after a
    module import (a scan takes ~80 us)."""
    global _scan
    if _scan is None or _scan[0] != len(sys.modules):
        from threadpoolctl import ThreadpoolController
        libraries = ThreadpoolController().select(user_api='blas').lib_controllers
        _scan = (len(sys.modules), libraries,
                 [(library.get_num_threads, _setter(library)) for library in libraries])
    return _scan


def blas_libraries() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries."""
    return _scanned()[1]


def _setter(library: Any) -> Callable[[int], Any]:
    # threadpoolctl >= 3.6 lets only the first Python thread that sets OpenBLAS's count
    # change it later (set_num_threads is a no-op on any other thread). This module
    # already serializes its changes (the lock and the count), so it calls the setter
    # underneath, and decoding on any thread gets the limit.
    return getattr(library, '_real_set_num_threads', None) or library.set_num_threads


def _enter(n_threads: int) -> None:
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = []
            for get_threads, set_threads in _scanned()[2]:
                old = get_threads()
                if old is not None and old != n_threads:
                    set_threads(n_threads)
                    _restore.append((set_threads, old))
        _depth += 1


def _exit() -> None:
    global _depth
    with _lock:
        _depth -= 1
        if _depth == 0:
            for set_threads, old in _restore:
                set_threads(old)


@contextlib.contextmanager
def blas_scope() -> Iterator[None]:
    """Runs the block with `tuning().blas_threads` BLAS threads (the outermost scope's count
    holds inside; nothing changes when it is None).

    Example:
        >>> from trax_sparse.fastmath.settings import tuned
        >>> with tuned(blas_threads=1), blas_scope():
        ...     all(lib.get_num_threads() == 1 for lib in blas_libraries())
        True
    """
    n_threads = tuning().blas_threads
    if n_threads is None:
        yield
        return
    _enter(n_threads)
    try:
        yield
    finally:
        _exit()


def limited_blas(fn: Callable) -> Callable:
    """`fn`, run inside `blas_scope()` (cheap when a scope is already open)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if _depth:                           # inside a scope already (on some thread)
            return fn(*args, **kwargs)
        n_threads = tuning().blas_threads
        if n_threads is None:
            return fn(*args, **kwargs)
        _enter(n_threads)
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()
    return call


def limited_numpy() -> types.ModuleType:
    """numpy, with its BLAS_FUNCTIONS run by `limited_blas`: the NumPy backend's array module.

    Every other attribute is numpy's own (the same objects: `ndarray`, dtypes, `linalg`).
    """
    module = types.ModuleType('numpy', doc=np.__doc__)
    module.__dict__.update(vars(np))
    module.__dict__['__getattr__'] = lambda name: getattr(np, name)   # numpy's lazy attributes
    for name in BLAS_FUNCTIONS:
        setattr(module, name, limited_blas(getattr(np, name)))
    return module


__all__ = ['BLAS_FUNCTIONS', 'blas_libraries', 'blas_scope', 'limited_blas', 'limited_numpy']
