"""Per-token decode time of one FF block and one attention block, dense vs sparse.

Batch 1, float32, predict mode, one token per step; median of repeated steps after
warm-up. JAX steps are jitted with the state donated (the K/V cache is updated in
place). Sizes (DESIGN.md §4, paper Table 1):
  800M: d 1024; dense FF d_ff 4096; SparseFF d_ff 6144, N 64 (rank 96); 16 heads, S 16
  17B:  d 9216; dense FF d_ff 65536; SparseFF d_ff 65536, N 256, rank 32; 96 heads, S 64
Attention is timed at cache position --position (after a prefix of that many tokens).

"MB/token" is the weights (and K/V cache) a step must read; "bound" is that divided
by the memory read bandwidth measured here (np.sum or a matrix-vector product over
1 GiB, whichever is faster), the physical limit of batch-1 decoding.

On a shared, loaded machine multi-threaded OpenBLAS adds milliseconds of thread
hand-off to every small NumPy matmul; OPENBLAS_NUM_THREADS=1 gives stable numbers.

Usage:
    .venv/bin/python benchmarks/sparse_layers.py                          # everything
    .venv/bin/python benchmarks/sparse_layers.py --sizes 800M --backends numpy --repeats 5
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_layers.py   # on a busy machine
"""
import argparse
import gc
import os
import statistics
import time
import warnings
from typing import Any, Callable

import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl

SIZES = {
    '800M': dict(d=1024, d_ff=4096, sparse_d_ff=6144, block=64, d_lowrank=None, heads=16,
                 modules=16),
    '17B': dict(d=9216, d_ff=65536, sparse_d_ff=65536, block=256, d_lowrank=32, heads=96,
                modules=64),
}
F32 = 4


def dense_ff(cfg: dict) -> tl.Layer:
    return tl.Serial(tl.Dense(cfg['d_ff']), tl.Relu(), tl.Dense(cfg['d']))


def sparse_ff(cfg: dict) -> tl.Layer:
    return tl.SparseFF(cfg['sparse_d_ff'], n_elements_in_block=cfg['block'],
                       d_lowrank=cfg['d_lowrank'], mode='predict')


def dense_attention(cfg: dict, max_len: int) -> tl.Layer:
    return tl.CausalAttention(cfg['d'], n_heads=cfg['heads'], max_len=max_len, mode='predict')


def sparse_attention(cfg: dict, max_len: int) -> tl.Layer:
    return tl.MultiplicativeConvCausalAttention(cfg['d'], n_heads=cfg['heads'],
                                                sparsity=cfg['modules'], max_len=max_len,
                                                mode='predict')


def weight_bytes_read(layer: tl.Layer, weights: Any, cfg: dict) -> int:
    """Bytes of weights one decode step reads (SparseFF: controller + chosen rows)."""
    total = sum(np.size(w) for w in fastmath.tree_leaves(weights)) * F32
    if isinstance(layer, tl.SparseFF):
        _, main = weights
        n_blocks, _, d = np.shape(main[0])
        unread = sum(np.size(w) for w in main[:-1]) - 2 * d * n_blocks - (
            n_blocks if len(main) == 4 else 0)
        total -= unread * F32
    return total


def abstract_weights_and_state(layer: tl.Layer, sig: shapes.ShapeDtype) -> tuple[Any, Any]:
    """Shapes of (weights, state) without computing them (jax.eval_shape)."""
    with fastmath.use_backend('jax'):
        return fastmath.abstract_eval(
            lambda x: layer.init(sig, fastmath.random.get_prng(0)))(sig)


def random_weights(weight_sigs: Any, seed: int) -> Any:
    """Uniform weights of scale 1/sqrt(width), generated in place (no float64 copies)."""
    gen = np.random.default_rng(seed)

    def fill(sig):
        a = gen.random(sig.shape, dtype=np.float32)
        lim = np.sqrt(3.0 / max(sig.shape[-2:] or (1,)))
        a -= 0.5
        a *= 2 * lim
        return a
    return fastmath.tree_map(fill, weight_sigs)


def zeros_state(state_sigs: Any) -> Any:
    """The initial predict state: empty caches, position 0."""
    return fastmath.tree_map(lambda s: np.zeros(s.shape, s.dtype), state_sigs)


def read_bandwidth_gbs() -> float:
    """Weights-read bandwidth: the faster of np.sum and a matrix-vector product over 1 GiB."""
    matrix = np.ones((2**14, 2**14), np.float32)        # 1 GiB
    vector = np.ones(2**14, np.float32)
    best = 0.0
    for read in (matrix.sum, lambda: matrix @ vector):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            read()
            times.append(time.perf_counter() - t0)
        best = max(best, matrix.nbytes / statistics.median(times) / 1e9)
    return best


def time_steps(step: Callable, x: Any, weights: Any, state: Any, rng: Any, block: Callable,
               warmup: int, repeats: int) -> tuple[float, Any]:
    for _ in range(warmup):
        y, state = step(x, weights, state, rng)
        block(y)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y, state = step(x, weights, state, rng)
        block(y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), state


def measure(make: Callable[[], tl.Layer], cfg: dict, backends: list[str], prefix: int,
            warmup: int, repeats: int, seed: int) -> dict:
    """Per-token seconds on each backend, plus bytes of weights read per token."""
    layer = make()
    token_sig = shapes.ShapeDtype((1, 1, cfg['d']))
    weight_sigs, state_sigs = abstract_weights_and_state(layer, token_sig)
    weights = random_weights(weight_sigs, seed)
    result = {'bytes': weight_bytes_read(layer, weights, cfg)}
    gen = np.random.default_rng(seed + 1)
    token = gen.normal(size=(1, 1, cfg['d'])).astype(np.float32)
    prefix_x = gen.normal(size=(1, prefix, cfg['d'])).astype(np.float32) if prefix else None
    for backend in backends:
        with fastmath.use_backend(backend):
            rng = fastmath.random.get_prng(0)
            if backend == 'jax':
                import jax
                weights = jax.device_put(weights)
                gc.collect()
                step = jax.jit(layer.pure_fn, donate_argnums=(2,))
                block = jax.block_until_ready
            else:
                step, block = layer.pure_fn, lambda y: y
            state = zeros_state(state_sigs)
            if prefix_x is not None:
                _, state = step(prefix_x, weights, state, rng)
            result[backend], state = time_steps(step, token, weights, state, rng, block,
                                                warmup, repeats)
            del state
        print(f'  {layer.name} {backend}: {result[backend] * 1e3:.3f} ms', flush=True)
    del weights
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='800M,17B')
    parser.add_argument('--backends', default='numpy,jax')
    parser.add_argument('--blocks', default='ff,attention')
    parser.add_argument('--position', type=int, default=512,
                        help='attention is timed after a prefix of this many tokens')
    parser.add_argument('--max_len', type=int, default=1024, help='K/V cache slots')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
    backends = args.backends.split(',')
    bandwidth = read_bandwidth_gbs()
    print(f'memory read bandwidth: {bandwidth:.1f} GB/s; OPENBLAS_NUM_THREADS='
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}", flush=True)
    rows = []
    for size in args.sizes.split(','):
        cfg = SIZES[size]
        for block in args.blocks.split(','):
            if block == 'ff':
                makers, prefix, kv_bytes = (lambda: dense_ff(cfg), lambda: sparse_ff(cfg)), 0, 0
            else:
                makers = (lambda: dense_attention(cfg, args.max_len),
                          lambda: sparse_attention(cfg, args.max_len))
                prefix, kv_bytes = args.position, 2 * args.position * cfg['d'] * F32
            dense, sparse = (measure(make, cfg, backends, prefix, args.warmup, args.repeats,
                                     seed=i) for i, make in enumerate(makers))
            for backend in backends:
                rows.append((size, block, backend, dense, sparse, kv_bytes))
    print_table(rows, bandwidth)


def print_table(rows: list, bandwidth: float) -> None:
    print()
    print('| size | block | backend | dense ms | sparse ms | speed-up | dense MB/token | '
          'sparse MB/token | dense bound ms | sparse bound ms |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for size, block, backend, dense, sparse, kv in rows:
        mb_dense, mb_sparse = (dense['bytes'] + kv) / 1e6, (sparse['bytes'] + kv) / 1e6
        print(f"| {size} | {block} | {backend} | {dense[backend] * 1e3:.3f} | "
              f"{sparse[backend] * 1e3:.3f} | {dense[backend] / sparse[backend]:.1f}x | "
              f"{mb_dense:.1f} | {mb_sparse:.2f} | {mb_dense / bandwidth:.3f} | "
              f"{mb_sparse / bandwidth:.3f} |")
    print()
    print(f'bound = MB/token / {bandwidth:.1f} GB/s (measured read bandwidth). Attention MB '
          f'include the K/V cache read at the timed position.')


if __name__ == '__main__':
    main()
