"""Lower bounds of a batch-1 decoding step: max(bytes / bandwidth, multiply-adds / matmul rate).

A decoding step must read its weights (and K/V cache) once and perform its
multiply-adds once, so it cannot be faster than either the bytes divided by the
memory bandwidth or the multiply-adds divided by the matmul rate. Both rates are
measured in the same run as the timings (`measure_rates`): the bandwidth as the
fastest of a streaming sum and matrix-vector products (NumPy's and jitted JAX's, which
uses all cores) over a 512 MiB array, the MAC rate as a square float32 matmul (the
faster of NumPy, with the run's BLAS threads, and jitted JAX).

Rows whose multiply-adds dominate (MultiplicativeDense at d 9216: d² MACs per token
from a few MB of weights) are then judged against compute, not memory.

Example:
    >>> import numpy as np
    >>> from trax_sparse import layers as tl
    >>> w = (np.zeros((4, 8), np.float32), np.zeros(8, np.float32))
    >>> macs_per_token(tl.Dense(8), w)          # one multiply-add per matrix weight
    32
"""
import dataclasses
import time
from typing import Any, Callable

import numpy as np

from trax_sparse import fastmath
from trax_sparse import layers as tl

# Trax 1.4.1 measured on this machine kind (per token, batch 1, float32, jit; 800M: d 1024,
# attention at cache position 512 of 1024): the reference column of issue 10's table.
TRAX_1_4_1_MS = {
    ('800M', 'ff', 'dense'): 2.33, ('800M', 'ff', 'sparse'): 5.52,
    ('800M', 'attention', 'dense'): 4.02, ('800M', 'attention', 'sparse'): 3.29,
    ('17B', 'ff', 'sparse'): 98.9, ('17B', 'attention', 'sparse'): 60.2,
}


@dataclasses.dataclass(frozen=True)
class Rates:
    """Measured memory read bandwidth (bytes/s) and float32 matmul rate (MAC/s)."""
    bandwidth: float
    mac_rate: float

    def bound(self, n_bytes: float, macs: float) -> float:
        """Seconds: the larger of the memory time and the compute time."""
        return max(n_bytes / self.bandwidth, macs / self.mac_rate)

    def limiter(self, n_bytes: float, macs: float) -> str:
        return 'bytes' if n_bytes / self.bandwidth >= macs / self.mac_rate else 'MACs'

    def describe(self) -> str:
        return (f'memory bandwidth {self.bandwidth / 1e9:.1f} GB/s (streaming read, all cores), '
                f'matmul rate {self.mac_rate / 1e9:.1f} GMAC/s (1024² float32 matmul), both '
                f'measured in this run, the faster of the measurements at its start and end')


def _best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _best_jitted_product(x: np.ndarray, y: np.ndarray, repeats: int) -> float:
    """Best seconds of jitted JAX's x @ y (XLA's threads), after a compiling call; inf
    without JAX."""
    if not fastmath.jax_available():
        return float('inf')
    with fastmath.use_backend('jax'):
        product = fastmath.jit(lambda a, b: a @ b)
        x_jax, y_jax = fastmath.to_backend((x, y))
        product(x_jax, y_jax).block_until_ready()
        return _best(lambda: product(x_jax, y_jax).block_until_ready(), repeats)


def measure_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the fastest of np.sum, NumPy's matrix-vector product (one
    BLAS thread in the benchmarks) and, where installed, jitted JAX's, which reads with all
    cores (on the 2-core machine kind ~1.5x one core: without it, XLA's dense 17B FF came
    out at 0.6x its 'bound')."""
    side = int(np.sqrt(n_bytes // 4))
    matrix = np.ones((side, side), np.float32)
    vector = np.ones(side, np.float32)
    best = min(_best(matrix.sum, repeats), _best(lambda: matrix @ vector, repeats),
               _best_jitted_product(matrix, vector, repeats))
    return matrix.nbytes / best


def measure_mac_rate(n: int = 1024, repeats: int = 5) -> float:
    """Multiply-adds per second of an n×n by n×n float32 matmul: the faster of NumPy (with the
    run's BLAS threads) and, where installed, jitted JAX (XLA's threads)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    best = min(_best(lambda: a @ b, repeats), _best_jitted_product(a, b, repeats))
    return n ** 3 / best


def measure_rates(earlier: Rates | None = None) -> Rates:
    """Both rates, measured now; with `earlier` (from the start of the run), the faster of the
    two measurements of each: the hardware's rate, less disturbed by the machine's load."""
    rates = Rates(measure_bandwidth(), measure_mac_rate())
    if earlier is None:
        return rates
    return Rates(max(rates.bandwidth, earlier.bandwidth), max(rates.mac_rate, earlier.mac_rate))


def macs_per_token(layer: tl.Layer, weights: Any, keys: int = 1, kv_width: int = 0) -> int:
    """Multiply-adds of one decoding step (batch 1, one token) of a predict-mode layer tree.

    A weight-bearing leaf does one MAC per weight (a matrix-vector product), except:
    Embedding / PositionalEncoding / a cached encoder: none; MultiplicativeDense: d_in·d_out
    (+ S·d_in gating); LocallyConvDense(Branch): each kernel once per module; SparseFF: the controller
    plus the chosen rows (2·d·d_ff/N). Each causal attention core over `keys` cached positions
    of width `kv_width` (= d_model) adds 2·keys·kv_width (q·k and p·v).
    """
    return int(layer.macs_per_step(weights, keys, kv_width))


def kv_cache_bytes_read(layer: tl.Layer, state: Any, position: int) -> int:
    """Bytes of attention K/V cache one decoding step (batch 1) reads at cache `position`:
    the filled slots of each causal cache [B, H, N, d_h] (axis 2; an LSH step reads at most
    these), the whole of each encoder cache [B, Le, d]; at the caches' own itemsize
    (`Layer.attention_caches`, so a bfloat16 cache counts 2 bytes a value).

        >>> import numpy as np
        >>> core = tl.DotProductCausalAttention(n_heads=2, max_len=8, mode='predict')
        >>> state = (np.zeros((1, 2, 8, 4), np.float32), np.zeros((1, 2, 8, 4), np.float32), 0)
        >>> kv_cache_bytes_read(core, state, 3)      # k and v: 3 slots x 2 heads x 4 floats
        192
    """
    total = 0
    for cache in layer.attention_caches(state):
        per_value = np.dtype(cache.dtype).itemsize
        if len(cache.shape) == 4:
            per_slot = int(np.prod(cache.shape)) // cache.shape[2]
            total += per_value * per_slot * min(position, cache.shape[2])
        else:
            total += per_value * int(np.prod(cache.shape))
    return total

