"""Per-token decode time of one FF block and one attention block, dense vs sparse.

Batch 1, float32, predict mode, one token per step, a different random token each step
(SparseFF then reads new rows each step); median of repeated steps after warm-up. A block
that reads little per step is timed as a stack of residual copies (each with its own
weights and cache) that together read at least --stack_read_mb (default 64 MB, twice the
32 MB L3) per step, at most 24 copies (a 24-layer model) and 4 GB of weights, and the time
divided by the copies: a single 800M block's 3.6-34 MB would stay partly in the L3
between repeated steps (and 5 sparse FF copies' 18 MB did), so it could beat the memory
bound. JAX steps are jitted with the state donated (the K/V cache is updated in place),
--jax_steps_per_call of them (default 8) in one call, as a layer runs inside a jitted
model step: the dispatch of a call is paid once per token for all layers.
Sizes (docs/architecture.md, paper Table 1):
  800M: d 1024; dense FF d_ff 4096; SparseFF d_ff 6144, N 64 (rank 96); 16 heads, S 16
  17B:  d 9216; dense FF d_ff 65536; SparseFF d_ff 65536, N 256, rank 32; 96 heads, S 64
Attention is timed at cache position --position (after a prefix of that many tokens).

Every row has its lower bound max(bytes / bandwidth, multiply-adds / matmul rate)
(benchmarks/bounds.py), with both rates measured in the same run: "MB/token" is the
weights (and K/V cache) a step must read, "MMAC/token" its multiply-adds. The Trax
column is Trax 1.4.1 measured on this machine kind (issue 10), a fixed reference.
Then the per-layer table: FF + attention, dense vs sparse, ratios from this run.
With --storages (default float32,bfloat16,gathered_bfloat16; `decoding.storage`) every block
is also timed with 16-bit storage, back to back with float32 on each backend: 'bfloat16'
(every weight and the K/V cache in bfloat16), 'gathered_bfloat16' (SparseFF's rows alone)
and, if asked for, 'bfloat16_cache' (the K/V cache alone), compute float32; the 16-bit table gives MB/token (from the layers' bytes_read_per_step and
the caches' itemsize) and ms, each with its ratio to float32.

On a shared, loaded machine multi-threaded OpenBLAS adds milliseconds of thread
hand-off to every small NumPy matmul; OPENBLAS_NUM_THREADS=1 gives stable numbers.

Usage:
    .venv/bin/python benchmarks/sparse_layers.py                          # everything
    .venv/bin/python benchmarks/sparse_layers.py --sizes 800M --backends numpy --repeats 5
    .venv/bin/python benchmarks/sparse_layers.py --sizes 800M --storages float32,bfloat16
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_layers.py   # on a busy machine
"""
import os

# One BLAS thread: batch-1 steps are memory bound, and on a shared 2-core machine more
# threads only add hand-off waits (set before NumPy loads OpenBLAS).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from bounds import (TRAX_1_4_1_MS, Rates, kv_cache_bytes_read, macs_per_token,  # noqa: E402
                    measure_rates)
from trax_sparse import decoding, fastmath, shapes  # noqa: E402
from trax_sparse import layers as tl  # noqa: E402
from trax_sparse.layers.flat import FlatForward  # noqa: E402

SIZES = {
    '800M': dict(d=1024, d_ff=4096, sparse_d_ff=6144, block=64, d_lowrank=None, heads=16,
                 modules=16),
    '17B': dict(d=9216, d_ff=65536, sparse_d_ff=65536, block=256, d_lowrank=32, heads=96,
                modules=64),
}
F32 = 4
# name -> (weights_dtype, cache_dtype) of `decoding.storage` (None: float32 as created).
STORAGES = {'float32': (None, None), 'bfloat16': ('bfloat16', 'bfloat16'),
            'gathered_bfloat16': ('gathered_bfloat16', None),
            'bfloat16_cache': (None, 'bfloat16')}          # the K/V cache alone
# Distinct input tokens the timed steps cycle through (NumPy: one per step; JAX: blocks of
# --jax_steps_per_call of them, one block per call).
N_TOKENS = 64
# At most this many copies of a block in one timed stack (a 24-layer model), and at most
# this many bytes of weights in all (JAX holds a second copy; 3 copies of the 17B SparseFF,
# 4.8 GB each, ran out of the 24 GB).
MAX_COPIES = 24
MAX_STACK_WEIGHT_BYTES = 4 << 30


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


def weight_bytes_read(layer: tl.Layer, weights: Any) -> int:
    """Bytes of weights one decode step reads (SparseFF: controller + chosen rows), at the
    weights' own itemsize (`Layer.bytes_read_per_step`)."""
    return int(layer.bytes_read_per_step(weights))


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


def time_steps(step: Callable, inputs: list, weights: Any, state: Any, rng: Any,
               block: Callable, warmup: int, repeats: int) -> tuple[float, Any]:
    """Median seconds of `step` after `warmup` calls; call i gets inputs[i % len(inputs)]."""
    for i in range(warmup):
        y, state = step(inputs[i % len(inputs)], weights, state, rng)
        block(y)
    times = []
    for i in range(repeats):
        x = inputs[(warmup + i) % len(inputs)]
        t0 = time.perf_counter()
        y, state = step(x, weights, state, rng)
        block(y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), state


def flat_step(layer: tl.Layer) -> Callable:
    """layer.pure_fn as NumPy decoding runs it (decoding.predict_step): a flat program."""
    program, memo = FlatForward(layer), {}
    return lambda x, weights, state, rng=None: program(x, weights, state, rng, memo)


def jax_steps(layer: tl.Layer, steps: int) -> Callable:
    """`steps` decoding steps of `layer` in one jitted call (state donated).

    Takes tokens [steps, 1, 1, d]: step i's input is token i plus 1e-3 times step i-1's
    output, a real dependency, so XLA cannot merge the steps. A model pays the dispatch
    of a jitted call once per token for all its layers; timing one small layer per call
    would charge it all to that layer.
    """
    import jax

    def run(tokens, weights, state, rng):
        y = tokens[0]
        for i in range(steps):
            y, state = layer.pure_fn(tokens[i] + 1e-3 * y, weights, state, rng)
        return y, state
    return jax.jit(run, donate_argnums=(2,))


def measure(make: Callable[[], tl.Layer], cfg: dict, backends: list[str], prefix: int,
            warmup: int, repeats: int, seed: int, jax_steps_per_call: int = 1,
            stack_read_bytes: int = 0, storages: tuple = ('float32',), rounds: int = 1) -> dict:
    """Per-token seconds of one block on each backend, plus its bytes read and MACs per token;
    result['storages'][name] the same for each storage of STORAGES (float32 first), timed in
    turn `rounds` times (each storage's best round).

    A block that reads fewer than `stack_read_bytes` per step (weights and the K/V cache
    filled to `prefix`) is timed as a stack of residual copies that together read at least
    that much (at most MAX_COPIES, each with its own weights and cache; the time divided by
    their number), so what a block reads is not still in the CPU caches from its
    previous step, as in a model of many layers.
    """
    one = make()
    token_sig = shapes.ShapeDtype((1, 1, cfg['d']))
    weight_sigs, state_sigs = abstract_weights_and_state(one, token_sig)
    weights = random_weights(weight_sigs, seed)
    per_storage = {}
    for name in storages:
        weights_dtype, cache_dtype = STORAGES[name]
        state = zeros_state(decoding.with_cache_dtype(one, state_sigs, cache_dtype))
        per_storage[name] = {
            'bytes': (weight_bytes_read(one, decoding.store_weights(one, weights, weights_dtype))
                      + kv_cache_bytes_read(one, state, prefix))}
    result = {'bytes': per_storage['float32']['bytes'], 'storages': per_storage,
              'macs': macs_per_token(one, weights, keys=prefix + 1, kv_width=cfg['d'])}
    weight_bytes = sum(np.size(w) for w in fastmath.tree_leaves(weights)) * F32
    copies = max(1, min(MAX_COPIES, -(-stack_read_bytes // result['bytes']),
                        MAX_STACK_WEIGHT_BYTES // weight_bytes))
    layer = one
    if copies > 1:                  # small weights: a stack of copies, each its own weights
        del weights
        layer = tl.Serial([tl.Residual(make()) for _ in range(copies)])
        weight_sigs, state_sigs = abstract_weights_and_state(layer, token_sig)
        weights = random_weights(weight_sigs, seed)
    gen = np.random.default_rng(seed + 1)
    # A different token every step, as in decoding: SparseFF then reads other rows each
    # step (the same token would find the rows of its last step still in the L3 cache).
    n_tokens = max(N_TOKENS, jax_steps_per_call)
    tokens = gen.normal(size=(n_tokens, 1, 1, cfg['d'])).astype(np.float32)
    prefix_x = gen.normal(size=(1, prefix, cfg['d'])).astype(np.float32) if prefix else None
    for backend in backends:
        with fastmath.use_backend(backend):
            rng = fastmath.random.get_prng(0)
            inputs = list(tokens)
            if backend == 'jax':
                import jax
                prefix_step = jax.jit(layer.pure_fn, donate_argnums=(2,))
                step, steps_per_call = jax_steps(layer, jax_steps_per_call), jax_steps_per_call
                block = jax.block_until_ready
                # One call's tokens (a decoder's next input is already on the device).
                inputs = [jax.device_put(tokens[i:i + steps_per_call])
                          for i in range(0, n_tokens - steps_per_call + 1, steps_per_call)]
            else:                       # the NumPy decoding path: the flat program
                step, block, steps_per_call = flat_step(layer), lambda y: y, 1
                prefix_step = step
            # Storages in turn, `rounds` times: each one's best round, so a burst of load on
            # the shared machine does not land on one storage only.
            for _, name in [(r, n) for r in range(rounds) for n in storages]:
                weights_dtype, cache_dtype = STORAGES[name]
                stored = fastmath.to_backend(decoding.store_weights(layer, weights,
                                                                    weights_dtype))
                gc.collect()
                state = zeros_state(decoding.with_cache_dtype(layer, state_sigs, cache_dtype))
                if prefix_x is not None:
                    _, state = prefix_step(prefix_x, stored, state, rng)
                per_call, state = time_steps(step, inputs, stored, state, rng, block, warmup,
                                              repeats)
                seconds = per_call / steps_per_call / copies
                per_storage[name][backend] = min(seconds, per_storage[name].get(backend, seconds))
                del state, stored
        for name in storages:
            print(f'  {one.name} {backend} {name}: {per_storage[name][backend] * 1e3:.3f} ms'
                  f'{f" (per copy of {copies})" if copies > 1 else ""}', flush=True)
    for backend in backends:
        result[backend] = per_storage['float32'][backend]
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
    parser.add_argument('--jax_steps_per_call', type=int, default=8,
                        help='JAX: decoding steps per jitted call (time / steps = per step)')
    parser.add_argument('--storages', default='float32,bfloat16,gathered_bfloat16',
                        help=f'storages to time (float32 always), of {", ".join(STORAGES)}')
    parser.add_argument('--rounds', type=int, default=1,
                        help='time the storages in turn this many times (best round each)')
    parser.add_argument('--stack_read_mb', type=int, default=64,
                        help='time a stack of copies of a block that together read at least '
                        f'this many MB per step (at most {MAX_COPIES} copies), so what a block '
                        'reads is not still in the CPU caches from its last step')
    args = parser.parse_args()
    warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
    backends = args.backends.split(',')
    storages = ['float32'] + [s for s in args.storages.split(',') if s and s != 'float32']
    if any(s not in STORAGES for s in storages):
        parser.error(f'--storages={args.storages}: expected names of {list(STORAGES)}')
    print('command: .venv/bin/python benchmarks/sparse_layers.py ' + ' '.join(sys.argv[1:])
          + f'; load average {os.getloadavg()[0]:.1f}', flush=True)
    rates = measure_rates()
    print(f"{rates.describe()}; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}", flush=True)
    rows = []
    for size in args.sizes.split(','):
        cfg = SIZES[size]
        for block in args.blocks.split(','):
            if block == 'ff':
                makers, prefix = (lambda: dense_ff(cfg), lambda: sparse_ff(cfg)), 0
            else:
                makers = (lambda: dense_attention(cfg, args.max_len),
                          lambda: sparse_attention(cfg, args.max_len))
                prefix = args.position
            for kind, make in zip(('dense', 'sparse'), makers):
                result = measure(make, cfg, backends, prefix, args.warmup, args.repeats,
                                 seed=len(rows), jax_steps_per_call=args.jax_steps_per_call,
                                 stack_read_bytes=args.stack_read_mb << 20, storages=storages,
                                 rounds=args.rounds)
                rows.append((size, block, kind, result))
    rates = measure_rates(rates)
    print_blocks(rows, backends, rates)
    print_layers(rows, backends, rates)
    print(f'load average at the end {os.getloadavg()[0]:.1f}')
    if len(storages) > 1:
        print_storages(rows, backends, storages)


def _bound_cells(result: dict, rates: Rates) -> list[str]:
    bound = rates.bound(result['bytes'], result['macs'])
    return [f"{result['bytes'] / 1e6:.1f}", f"{result['macs'] / 1e6:.1f}",
            f"{bound * 1e3:.3f} ({rates.limiter(result['bytes'], result['macs'])})"]


def print_blocks(rows: list, backends: list[str], rates: Rates) -> None:
    """One row per block: Trax 1.4.1, ours on each backend (and x bound), the bound."""
    print()
    print('| size | block | Trax 1.4.1 ms | ' + ' | '.join(f'{b} ms | (x bound)' for b in backends)
          + ' | MB/token | MMAC/token | bound ms (limit) |')
    print('|---|---|---|' + '---|---|' * len(backends) + '---|---|---|')
    for size, block, kind, result in rows:
        bound = rates.bound(result['bytes'], result['macs'])
        trax = TRAX_1_4_1_MS.get((size, block, kind))
        cells = [f'{size}', f'{kind} {block}', '-' if trax is None else f'{trax:.2f}']
        for b in backends:
            cells += [f'{result[b] * 1e3:.3f}', f'{result[b] / bound:.1f}x']
        print('| ' + ' | '.join(cells + _bound_cells(result, rates)) + ' |')
    print(f'\nbound = max(MB/token / bandwidth, MACs/token / matmul rate); {rates.describe()}. '
          'Attention MB include the K/V cache read at the timed position.')


def print_layers(rows: list, backends: list[str], rates: Rates) -> None:
    """Per size: one layer = FF + attention, dense vs sparse, and sparse / dense (this run)."""
    by_key = {(size, block, kind): result for size, block, kind, result in rows}
    sizes = sorted({size for size, _, _, _ in rows}, key=list(SIZES).index)
    print()
    print('| size | layer (FF + attention) | Trax 1.4.1 ms | ' +
          ' | '.join(f'{b} ms' for b in backends) + ' | bound ms |')
    print('|---|---|---|' + '---|' * len(backends) + '---|')
    for size in sizes:
        layer = {}
        for kind in ('dense', 'sparse'):
            parts = [by_key.get((size, block, kind)) for block in ('ff', 'attention')]
            if None in parts:
                continue
            trax = [TRAX_1_4_1_MS.get((size, block, kind)) for block in ('ff', 'attention')]
            layer[kind] = {b: sum(p[b] for p in parts) for b in backends}
            layer[kind]['bound'] = sum(rates.bound(p['bytes'], p['macs']) for p in parts)
            layer[kind]['trax'] = None if None in trax else sum(trax)
            cells = [size, kind, '-' if layer[kind]['trax'] is None else
                     f"{layer[kind]['trax']:.2f}"]
            cells += [f'{layer[kind][b] * 1e3:.3f}' for b in backends]
            print('| ' + ' | '.join(cells + [f"{layer[kind]['bound'] * 1e3:.3f}"]) + ' |')
        if len(layer) == 2:
            dense, sparse = layer['dense'], layer['sparse']
            trax = ('-' if dense['trax'] is None or sparse['trax'] is None
                    else f"{sparse['trax'] / dense['trax']:.2f}")
            cells = [size, 'sparse / dense', trax]
            cells += [f'{sparse[b] / dense[b]:.3f}' for b in backends]
            print('| ' + ' | '.join(cells + [f"{sparse['bound'] / dense['bound']:.3f}"]) + ' |')


def print_storages(rows: list, backends: list[str], storages: list[str]) -> None:
    """One row per block and storage: MB/token and ms, each with its ratio to float32."""
    print('\n16-bit storage (compute float32): MB/token = weights + K/V cache read per step')
    print('| size | block | storage | MB/token | (x float32) | '
          + ' | '.join(f'{b} ms | (x float32)' for b in backends) + ' |')
    print('|---|---|---|---|---|' + '---|---|' * len(backends))
    for size, block, kind, result in rows:
        base = result['storages']['float32']
        for name in storages:
            r = result['storages'][name]
            cells = [size, f'{kind} {block}', name, f"{r['bytes'] / 1e6:.2f}",
                     f"{r['bytes'] / base['bytes']:.2f}x"]
            for b in backends:
                cells += [f'{r[b] * 1e3:.3f}', f'{r[b] / base[b]:.2f}x']
            print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
