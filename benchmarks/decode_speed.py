"""Decoding speed of Scaling Transformers: the paper's Table 1 on this machine.

Batch 1, greedy, one token per step after a warm-up, median of repeated steps, random
weights, float32, on the NumPy and the JAX backend (jit, state donated):
(a) the 800M configuration's decoder (d 1024, 16 heads, d_ff 4096 dense / 6144 sparse,
    N 64, S 16, vocab 32000, --layers layers; the paper's encoder runs once per sequence
    and is left out), and
(b) one block (attention + FF) at the 17B dimensions (d 9216, d_ff 65536, 96 heads,
    N 256, d_lowrank 32, S 64), fed its embedding's 8 tokens in turn, so SparseFF reads
    other rows each step, as in a deep model.
Every row shows the bytes of weights read and the multiply-adds per token and the lower
bound max(bytes / bandwidth, MACs / matmul rate), both rates measured in the same run
(benchmarks/bounds.py): measured / bound says how close a row is to the physical limit.
The Trax column is Trax 1.4.1 on this machine kind (issue 10's table, a fixed reference):
its per-block times summed (FF + attention) times the layers, so it leaves out the
embedding and the output layer; '-' where the table has no figure.
Part (a) also decodes each model with 16-bit storage (--storages, `decoding.storage`):
'bfloat16' (every weight and the K/V caches in bfloat16) and 'gathered_bfloat16' (only the
row-gathered weights: embeddings, SparseFF rows; the CPU default, weights_dtype='auto'), the
compute staying float32; its table gives the weight and K/V cache bytes read per token and
the ms of each storage with its ratio to float32 in the same run, storages timed back to back.

Run: .venv/bin/python benchmarks/decode_speed.py [--part=a|b|ab] [--layers=24] [--steps=16]
         [--storages=float32,bfloat16,gathered_bfloat16] [--variants=baseline,...]
"""
import os

# Batch-1 decoding is memory bound: one BLAS thread already reaches the memory bandwidth
# (measured: a 16 MB matrix-vector product at ~24 GB/s), more threads only contend for the
# 2 cores (4-7x slower when the machine is busy). Set before NumPy loads OpenBLAS.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse
import gc
import statistics
import time

import numpy as np

from bounds import TRAX_1_4_1_MS, Rates, kv_cache_bytes_read, macs_per_token, measure_rates
from sparse_layers import flat_step
from trax_sparse import decoding, fastmath, models, shapes
from trax_sparse import layers as tl
from trax_sparse.decoding import bytes_read_per_token

PAPER_800M = {'baseline': (0.160, 5.9), '+ Sparse FF': (0.093, 3.1),
              '+ Sparse QKV': (0.152, 6.2), '+ Sparse FF + QKV': (0.061, 1.9)}
PAPER_17B_BLOCK = {'baseline': 0.581, '+ Sparse FF': 0.259, '+ Sparse QKV': 0.554,
                   '+ Sparse FF + QKV': 0.014}
VARIANTS = {  # name -> (ff_sparsity, attention_type, d_ff multiplier key, loss_sparsity)
    'baseline': (0, 'dense', 'dense', 0),
    '+ Sparse FF': ('ff', 'dense', 'sparse', 0),
    '+ Sparse QKV': (0, 'sparse_qkv', 'dense', 0),
    '+ Sparse FF + QKV': ('ff', 'sparse_qkv', 'sparse', 0),
    '+ Sparse FF + QKV + loss': ('ff', 'sparse_qkv', 'sparse', 4),
}


# name -> (weights_dtype, cache_dtype) of `decoding` (None: as trained, the compute dtype).
STORAGES = {'float32': (None, None), 'bfloat16': ('bfloat16', 'bfloat16'),
            'gathered_bfloat16': ('gathered_bfloat16', None)}


def _trax_ms(size: str, variant: str, n_layers: int) -> float | None:
    """Trax 1.4.1's per-token ms for a variant: (FF + attention) of issue 10's table x layers."""
    ff, attention, _, loss = VARIANTS[variant]
    if loss:
        return None
    parts = [TRAX_1_4_1_MS.get((size, 'ff', 'sparse' if ff else 'dense')),
             TRAX_1_4_1_MS.get((size, 'attention', 'sparse' if attention != 'dense' else 'dense'))]
    return None if None in parts else n_layers * sum(parts)


def time_per_token(model: tl.Layer, weights, backend: str, steps: int, inputs=None,
                   cache_dtype=None) -> float:
    with fastmath.use_backend(backend):
        return decoding.time_per_token(model, weights, steps, inputs, cache_dtype=cache_dtype)


def storage_row(model: tl.Layer, weights, signature, steps: int, storages, inputs=None,
                rounds: int = 1) -> dict:
    """{storage: {'bytes', 'kv', 'numpy', 'jax'}}: weight and K/V cache bytes read per token (at
    cache position `steps`) and seconds per token of each storage, timed in turn `rounds`
    times on each backend (each storage's best round: the ratios to float32 are of one
    moment of the shared machine, and a burst of load does not land on one storage)."""
    out = {}
    for name in storages:
        weights_dtype, cache_dtype = STORAGES[name]
        stored = decoding.store_weights(model, weights, weights_dtype)
        with fastmath.use_backend('numpy'):
            state = decoding.init_predict_state(model, signature, cache_dtype)
        out[name] = {'stored': stored, 'cache_dtype': cache_dtype,
                     'bytes': bytes_read_per_token(model, stored),
                     'kv': kv_cache_bytes_read(model, state, steps)}
        del state
    for backend in ('numpy', 'jax'):
        for _, name in [(r, n) for r in range(rounds) for n in storages]:   # best round
            row = out[name]
            seconds = time_per_token(model, row['stored'], backend, steps, inputs,
                                     row['cache_dtype'])
            row[backend] = min(seconds, row.get(backend, seconds))
    for row in out.values():
        del row['stored']
    return out


def _lm(variant: str, d: int, d_ff: dict, n_heads: int, n_layers: int, ff_sparsity, qkv: int,
        vocab: int, max_len: int):
    ff, attention, width, loss = VARIANTS[variant]
    return models.ScalingTransformerLM(
        vocab, d_model=d, d_ff=d_ff[width], n_layers=n_layers, n_heads=n_heads, dropout=0.0,
        max_len=max_len, ff_sparsity=ff_sparsity if ff else 0, attention_type=attention,
        qkv_sparsity=qkv, loss_sparsity=loss, mode='predict')


def _init(model: tl.Layer, signature):
    with fastmath.use_backend('jax'):
        weights, _ = model.init(signature, rng=fastmath.random.get_prng(0))
        weights = fastmath.to_numpy(weights)
    model.weights = weights
    return weights


def part_a(n_layers: int, steps: int, storages=('float32',), variants=tuple(VARIANTS),
           terraformer: bool = True, rounds: int = 1) -> tuple:
    d_ff = {'dense': 4096, 'sparse': 6144}
    rows, by_storage = [], []
    for variant in variants:
        model = _lm(variant, 1024, d_ff, 16, n_layers, 64, 16, 32000, 256)
        signature = shapes.ShapeDtype((1, 1), np.int32)
        weights = _init(model, signature)
        n_bytes = bytes_read_per_token(model, weights)
        macs = macs_per_token(model, weights, keys=steps, kv_width=1024)
        stored = storage_row(model, weights, signature, steps, storages, rounds=rounds)
        times = {b: stored['float32'][b] for b in ('numpy', 'jax')}
        rows.append((variant, n_bytes, macs, times, _trax_ms('800M', variant, n_layers)))
        by_storage.append((variant, stored))
        del model, weights
        gc.collect()
    if not terraformer:
        return (f'(a) 800M configuration, decoder only, {n_layers} layers, per token', rows,
                {k: v[0] for k, v in PAPER_800M.items()}, by_storage)
    terraformer = models.Terraformer(
        32000, d_model=1024, d_ff=6144, n_encoder_layers=1, n_decoder_layers=n_layers,
        n_heads=16, encoder_attention_type='dense', decoder_attention_type='sparse_qkv',
        qkv_sparsity=16, ff_sparsity=64, loss_sparsity=4, dropout=0.0, max_len=512,
        mode='predict')
    inputs = np.ones((1, 64), np.int32)
    signature = (shapes.signature(inputs), shapes.ShapeDtype((1, 1), np.int32))
    weights = _init(terraformer, signature)
    decoder_bytes = bytes_read_per_token(terraformer, weights)
    macs = macs_per_token(terraformer, weights, keys=steps, kv_width=1024)
    stored = storage_row(terraformer, weights, signature, steps, storages, inputs, rounds)
    times = {b: stored['float32'][b] for b in ('numpy', 'jax')}
    name = 'Terraformer (2 sparse-QKV attentions / block)'
    rows.append((name, decoder_bytes, macs, times, None))
    by_storage.append((name, stored))
    return (f'(a) 800M configuration, decoder only, {n_layers} layers, per token', rows,
            {k: v[0] for k, v in PAPER_800M.items()}, by_storage)


def part_b(steps: int) -> tuple:
    d, d_ff, heads = 9216, 65536, 96
    rows = []
    for variant in list(VARIANTS)[:4]:
        ff, attention, _, _ = VARIANTS[variant]
        attention_layer = (tl.CausalAttention(d, heads, max_len=64, mode='predict')
                           if attention == 'dense' else
                           tl.MultiplicativeConvCausalAttention(d, heads, sparsity=64,
                                                                max_len=64, mode='predict'))
        ff_layers = ([tl.SparseFF(d_ff, n_elements_in_block=256, d_lowrank=32, mode='predict')]
                     if ff else [tl.Dense(d_ff), tl.Relu(), tl.Dense(d)])
        block = tl.Serial(tl.Embedding(8, d),
                          tl.Residual(tl.LayerNorm(), attention_layer),
                          tl.Residual(tl.LayerNorm(), ff_layers))
        weights = _init(block, shapes.ShapeDtype((1, 1), np.int32))
        n_bytes = bytes_read_per_token(block, weights) - 4 * d     # not the embedding row
        macs = macs_per_token(block, weights, keys=steps, kv_width=d)
        times = {}
        for backend in ('numpy', 'jax'):
            times[backend] = _block_time(block, weights, backend, steps)
        rows.append((variant, n_bytes, macs, times, _trax_ms('17B', variant, 1)))
        del block, weights
        gc.collect()
    return ('(b) one block at the 17B dimensions (d 9216, d_ff 65536, 96 heads)', rows,
            PAPER_17B_BLOCK, None)


def _block_time(block, weights, backend, steps):
    with fastmath.use_backend(backend):
        w = fastmath.to_backend(weights)
        state = fastmath.to_backend(fastmath.tree_map(np.copy, block.state))
        run = fastmath.jit(block.pure_fn, donate_argnums=(2,)) if backend == 'jax' \
            else flat_step(block)                                   # as NumPy decoding runs
        # The embedding's 8 tokens in turn: SparseFF then chooses other rows each step, as
        # in a model of many layers, instead of finding last step's rows (28.7 MB at 17B)
        # still in the 32 MB L3 cache.
        tokens, times = [np.full((1, 1), i % 8, np.int32) for i in range(8)], []
        y, state = block.pure_fn(tokens[0], w, state)               # prefix call, eager
        for i in range(steps + 2):
            start = time.perf_counter()
            y, state = run(tokens[(i + 1) % 8], w, state)
            np.asarray(y)
            if i >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times)


def _print_table(title, rows, rates: Rates, paper):
    base = {b: rows[0][3][b] for b in ('numpy', 'jax')}
    print(f'\n{title}; {rates.describe()}')
    print('| model | weights read / token | GMAC / token | bound ms (limit) | Trax 1.4.1 ms '
          '| numpy ms | (x bound) | speed-up | jax ms | (x bound) | speed-up | paper s |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for name, n_bytes, macs, times, trax in rows:
        bound = rates.bound(n_bytes, macs)
        cells = []
        for b in ('numpy', 'jax'):
            cells += [f'{times[b] * 1e3:.2f}', f'{times[b] / bound:.1f}x',
                      f'{base[b] / times[b]:.2f}x']
        paper_value = paper.get(name)
        print(f'| {name} | {n_bytes / 1e6:.1f} MB | {macs / 1e9:.3f} | {bound * 1e3:.2f} '
              f'({rates.limiter(n_bytes, macs)}) | {"-" if trax is None else f"{trax:.1f}"} | '
              + ' | '.join(cells) + f" | {'' if paper_value is None else paper_value} |")


def _print_storage_table(rows) -> None:
    """Bytes read per token and ms of each storage, with ratios to float32 (same run)."""
    storages = list(rows[0][1])
    print('\n16-bit storage (compute float32): weights + K/V cache bytes read per token '
          '(ratio to float32), ms per token (ratio to float32, same run)')
    print('| model | storage | weights read / token | K/V cache read / token | numpy ms | '
          '(x float32) | jax ms | (x float32) |')
    print('|---|---|---|---|---|---|---|---|')
    for name, stored in rows:
        base = stored['float32']
        for storage in storages:
            r = stored[storage]
            cells = [name, storage, f"{r['bytes'] / 1e6:.1f} MB ({r['bytes'] / base['bytes']:.2f}x)",
                     f"{r['kv'] / 1e6:.2f} MB ({r['kv'] / base['kv']:.2f}x)"]
            for b in ('numpy', 'jax'):
                cells += [f'{r[b] * 1e3:.2f}', f'{r[b] / base[b]:.2f}x']
            print('| ' + ' | '.join(cells) + ' |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--part', default='ab')
    parser.add_argument('--layers', type=int, default=24)
    parser.add_argument('--steps', type=int, default=16)
    parser.add_argument('--storages', default=','.join(STORAGES),
                        help=f'part (a): storages to time, of {", ".join(STORAGES)}')
    parser.add_argument('--variants', default=','.join(VARIANTS),
                        help='part (a): the LM variants to time (names of its table)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='part (a): time the storages in turn this many times (best round)')
    parser.add_argument('--no_terraformer', action='store_true',
                        help='part (a): leave out the Terraformer row')
    args = parser.parse_args()
    storages = ['float32'] + [s for s in args.storages.split(',') if s != 'float32']
    unknown = [s for s in storages if s not in STORAGES]
    variants = [v.strip() for v in args.variants.split(',')]
    unknown += [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown --storages / --variants: {unknown}; storages: {list(STORAGES)}, '
                     f'variants: {list(VARIANTS)}')
    print(f'command: .venv/bin/python benchmarks/decode_speed.py --part={args.part} '
          f'--layers={args.layers} --steps={args.steps} --storages={",".join(storages)} '
          f'--variants={",".join(variants)!r} --rounds={args.rounds}'
          f'{" --no_terraformer" if args.no_terraformer else ""}; load average '
          f'{os.getloadavg()[0]:.1f}')
    rates = measure_rates()
    tables = []
    if 'a' in args.part:
        tables.append(part_a(args.layers, args.steps, storages, variants,
                             not args.no_terraformer, args.rounds))
    if 'b' in args.part:
        tables.append(part_b(args.steps))
    rates = measure_rates(rates)
    print(f'load average at the end {os.getloadavg()[0]:.1f}')
    for title, rows, paper, by_storage in tables:
        _print_table(title, rows, rates, paper)
        if by_storage and len(storages) > 1:
            _print_storage_table(by_storage)


if __name__ == '__main__':
    main()
