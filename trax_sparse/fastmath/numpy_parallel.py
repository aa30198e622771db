"""The NumPy backend's use of both cores: large work split among worker threads.

One core reaches neither the memory bandwidth on scattered rows (SparseFF's chosen rows,
a K/V cache read head by head) nor the machine's matmul rate. NumPy's take and BLAS
release the GIL, so a small pool of threads (one per core, up to 4; one pool per process)
runs parts of such work at once. Each worker runs in a copy of the caller's context (so
`fastmath.use_backend('numpy')` holds there too) and never waits for the pool itself.
Work below the thresholds runs on the calling thread: a hand-off costs ~0.1 ms.

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

# Work that reads more than this many bytes (`in_parts`) is split among threads (NumPy's
# take and BLAS release the GIL): one core's reads of scattered rows or of per-head cache
# rows do not reach the memory bandwidth. At the 17B dimensions the gathered FF (2 x 9.4 MB
# of SparseFF rows per token) in 2 parts took 0.65-0.87 of its time in one, and attention
# over 513 cached positions (38 MB) 0.69. At 800M (4.2 MB of cache) 2 threads were slower.
PARALLEL_GATHER_MIN_BYTES = 8 << 20
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_POOL_THREAD_PREFIX = 'fastmath'
_pool_of_process: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None   # (pid, pool)


def _even_slices(n: int, parts: int) -> list[slice]:
    """`parts` contiguous ranges of [0, n), as even as integers allow."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def column_slices(n_columns: int, n_bytes: int, max_parts: int) -> list[slice]:
    """Up to `max_parts` contiguous column ranges of [0, n_columns) when `n_bytes` is large."""
    parts = min(max_parts, n_columns) if n_bytes >= PARALLEL_GATHER_MIN_BYTES else 1
    return _even_slices(n_columns, parts)


def _worker_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's worker threads (made on first use, again in a forked child)."""
    global _pool_of_process
    if _pool_of_process is None or _pool_of_process[0] != os.getpid():   # none yet, or forked
        _pool_of_process = (os.getpid(), concurrent.futures.ThreadPoolExecutor(
            _WORKERS, thread_name_prefix=_POOL_THREAD_PREFIX))
    return _pool_of_process[1]


def _in_parallel(fn: Callable, parts: Sequence[Any]) -> list:
    """[fn(part) for part in parts]: the first on this thread, the others on worker threads.

    Each worker runs in a copy of the caller's context, so fastmath.use_backend('numpy')
    holds there too. On a worker thread all run there: a worker never waits for the pool
    (no deadlock).
    """
    if len(parts) == 1 or threading.current_thread().name.startswith(_POOL_THREAD_PREFIX):
        return [fn(part) for part in parts]
    futures = [_worker_pool().submit(contextvars.copy_context().run, fn, part)
               for part in parts[1:]]
    return [fn(parts[0])] + [future.result() for future in futures]


def in_parts(fn: Callable[[slice], Any], n_columns: int, n_bytes: int) -> list:
    """[fn(columns) for contiguous ranges of [0, n_columns)]: one range, or one per thread.

    `n_bytes` is what fn(slice(0, n_columns)) reads: from PARALLEL_GATHER_MIN_BYTES on,
    each worker thread computes one range. Examples: SparseFF's gathered rows by blocks
    (the parts are summed), attention over a long K/V cache by heads (concatenated).
    """
    return _in_parallel(fn, column_slices(n_columns, n_bytes, _WORKERS))


# Products of at least this many multiply-adds are split along the contraction among the
# worker threads: one core's BLAS is the limit of a compute-bound product. Sparse QKV's
# MultiplicativeDense at d 9216 (64 x 9216 @ 9216 x 144 per token, 85M multiply-adds) took
# 1.6-1.9 ms on 2 threads against 2.2-2.7 ms on one; its 12M-MAC convolutions took longer
# split (0.93 against 0.69 ms for the three: handing work to a thread costs ~0.1 ms).
PARALLEL_MATMUL_MIN_MACS = 32_000_000
# A product whose matrix b has at least this many bytes is split the same way even when it
# is memory bound (a decoding step's matrix-vector product): each thread streams its own
# contiguous range of b's rows. One core reads ~24 GB/s, two ~33-42. Alone, back to back,
# a 16.8 MB matrix (the dense 800M FF) took 0.51-0.56 ms on 2 threads against 0.70-0.81 on
# one, but inside a model the hand-off ate it: the dense 800M FF block 1.41 vs 1.49 ms, the
# 24-layer dense decoder 75.1 vs 74.7 ms. The 131 MB output layer pays (the 24-layer sparse
# decoder: 24.3 vs 26.8 ms), and so do the 17B matrices (340 MB and more).
PARALLEL_MATVEC_MIN_BYTES = 32 << 20


def parallel_matmul(a, b):
    """a [..., m, k] @ b [k, n] -> [..., m, n]; large products split along k among threads.

    Large: PARALLEL_MATMUL_MIN_MACS multiply-adds (compute bound) or a matrix b of
    PARALLEL_MATVEC_MIN_BYTES (memory bound). Each thread multiplies a range of a's
    columns by the same range of b's rows, and the partial products are summed.
    """
    n_inner = b.shape[0]
    large = (a.size * b.shape[-1] >= PARALLEL_MATMUL_MIN_MACS
             or b.nbytes >= PARALLEL_MATVEC_MIN_BYTES)
    parts = _WORKERS if large else 1
    if b.ndim != 2 or parts == 1 or n_inner < parts:
        return np.matmul(a, b)
    rows = a.reshape(-1, n_inner)                                        # [m', k]
    products = _in_parallel(lambda inner: np.matmul(rows[:, inner], b[inner]),
                            _even_slices(n_inner, parts))
    return sum(products[1:], products[0]).reshape(a.shape[:-1] + (b.shape[1],))


# A list of products with at least this many multiply-adds in all is shared among the
# worker threads, whole products per thread. Sparse QKV's three convolutions at d 9216
# (2 x 12M + 4M multiply-adds per token) took 0.56 ms this way against 0.69 ms on one.
PARALLEL_MATMULS_MIN_MACS = 16_000_000


def parallel_matmuls(pairs: Sequence[tuple]) -> list:
    """[a @ b for a, b in pairs]; a large total is shared among threads, whole products each.

    The products go to the threads largest first, each to the least loaded one.
    """
    macs = [a.size * b.shape[-1] for a, b in pairs]
    n_groups = min(_WORKERS, len(pairs)) if sum(macs) >= PARALLEL_MATMULS_MIN_MACS else 1
    if n_groups == 1:
        return [np.matmul(a, b) for a, b in pairs]
    groups, loads = [[] for _ in range(n_groups)], [0] * n_groups
    for i in sorted(range(len(pairs)), key=lambda i: -macs[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(i)
        loads[lightest] += macs[i]
    products = [None] * len(pairs)
    for group, results in zip(groups, _in_parallel(
            lambda group: [np.matmul(*pairs[i]) for i in group], groups)):
        for i, product in zip(group, results):
            products[i] = product
    return products
