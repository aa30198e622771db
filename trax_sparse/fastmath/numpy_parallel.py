"""The NumPy backend's use of both cores: large work split among worker threads.

One core reaches neither the memory bandwidth on scattered rows (SparseFF's chosen rows,
a K/V cache read head by head) nor the machine's matmul rate. NumPy's take and BLAS
release the GIL, so a small pool of threads (one per core, up to 4; one pool per process)
runs parts of such work at once. Each worker runs in a copy of the caller's context (so
`fastmath.use_backend('numpy')` and `fastmath.tuned` hold there too) and never waits for the
pool itself. Work below the thresholds of `fastmath.tuning()` runs on the calling thread: a
hand-off costs ~0.1 ms. The thresholds and their measurements: docs/performance.md.

Example:
    >>> import numpy as np
    >>> parts = in_parts(lambda columns: int(np.arange(6)[columns].sum()), 6, n_bytes=0)
    >>> parts                               # small work: one part, on this thread
    [15]
"""
import concurrent.futures
import contextvars
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse.fastmath.blas_threads import limited_blas
from trax_sparse.fastmath.numpy_16bit import float32_products
from trax_sparse.fastmath.settings import tuning

_POOL_THREAD_PREFIX = 'fastmath'
# (pid, workers, pool): made on first use, again in a forked child or for more threads.
_pool_of_process: tuple[int, int, concurrent.futures.ThreadPoolExecutor] | None = None

# 16-bit floats multiply in float32 (numpy_16bit.py).
_matmul = float32_products(np.matmul)


def _even_slices(n: int, parts: int) -> list[slice]:
    """`parts` contiguous ranges of [0, n), as even as integers allow."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def column_slices(n_columns: int, n_bytes: int, max_parts: int) -> list[slice]:
    """Up to `max_parts` contiguous column ranges of [0, n_columns) when `n_bytes` is large
    (at least `tuning().parallel_gather_min_bytes`)."""
    large = n_bytes >= tuning().parallel_gather_min_bytes
    return _even_slices(n_columns, min(max_parts, n_columns) if large else 1)


def _worker_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's worker threads, at least `workers` (made on first use, again in a forked
    child, and larger when `tuning().threads` grows)."""
    global _pool_of_process
    pid = os.getpid()
    if _pool_of_process is None or _pool_of_process[0] != pid or _pool_of_process[1] < workers:
        if _pool_of_process is not None and _pool_of_process[0] == pid:
            _pool_of_process[2].shutdown(wait=False)                     # replaced: larger
        _pool_of_process = (pid, workers, concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix=_POOL_THREAD_PREFIX))
    return _pool_of_process[2]


def _in_parallel(fn: Callable, parts: Sequence[Any]) -> list:
    """[fn(part) for part in parts]: the first on this thread, the others on worker threads.

    Each worker runs in a copy of the caller's context, so fastmath.use_backend('numpy')
    holds there too. On a worker thread all run there: a worker never waits for the pool
    (no deadlock).
    """
    if len(parts) == 1 or threading.current_thread().name.startswith(_POOL_THREAD_PREFIX):
        return [fn(part) for part in parts]
    pool = _worker_pool(len(parts) - 1)
    futures = [pool.submit(contextvars.copy_context().run, fn, part) for part in parts[1:]]
    return [fn(parts[0])] + [future.result() for future in futures]


@limited_blas
def in_parts(fn: Callable[[slice], Any], n_columns: int, n_bytes: int) -> list:
    """[fn(columns) for contiguous ranges of [0, n_columns)]: one range, or one per thread.

    `n_bytes` is what fn(slice(0, n_columns)) reads: from
    `tuning().parallel_gather_min_bytes` on, each of `tuning().threads` threads computes
    one range. Examples: SparseFF's gathered rows by blocks (the parts are summed),
    attention over a long K/V cache by heads (concatenated).
    """
    return _in_parallel(fn, column_slices(n_columns, n_bytes, tuning().threads))


@limited_blas
def parallel_matmul(a, b):
    """a [..., m, k] @ b [k, n] -> [..., m, n]; large products split along k among threads.

    Large: `tuning().parallel_matmul_min_macs` multiply-adds (compute bound) or a matrix b
    of `tuning().parallel_matvec_min_bytes` (memory bound). Each thread multiplies a range
    of a's columns by the same range of b's rows, and the partial products are summed.
    """
    n_inner, settings = b.shape[0], tuning()
    large = (a.size * b.shape[-1] >= settings.parallel_matmul_min_macs
             or b.nbytes >= settings.parallel_matvec_min_bytes)
    parts = settings.threads if large else 1
    if b.ndim != 2 or parts == 1 or n_inner < parts:
        return _matmul(a, b)
    rows = a.reshape(-1, n_inner)                                        # [m', k]
    products = _in_parallel(lambda inner: _matmul(rows[:, inner], b[inner]),
                            _even_slices(n_inner, parts))
    return sum(products[1:], products[0]).reshape(a.shape[:-1] + (b.shape[1],))


@limited_blas
def parallel_matmuls(pairs: Sequence[tuple]) -> list:
    """[a @ b for a, b in pairs]; a large total (`tuning().parallel_matmuls_min_macs`) is
    shared among threads, whole products each.

    The products go to the threads largest first, each to the least loaded one.
    """
    macs, settings = [a.size * b.shape[-1] for a, b in pairs], tuning()
    n_groups = (min(settings.threads, len(pairs))
                if sum(macs) >= settings.parallel_matmuls_min_macs else 1)
    if n_groups == 1:
        return [_matmul(a, b) for a, b in pairs]
    groups, loads = [[] for _ in range(n_groups)], [0] * n_groups
    for i in sorted(range(len(pairs)), key=lambda i: -macs[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(i)
        loads[lightest] += macs[i]
    products = [None] * len(pairs)
    for group, results in zip(groups, _in_parallel(
            lambda group: [_matmul(*pairs[i]) for i in group], groups)):
        for i, product in zip(group, results):
            products[i] = product
    return products
