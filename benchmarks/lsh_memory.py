"""LSH attention memory at long length vs dense attention's L x L scores (CPU, JAX).

For LSHSelfAttention and for a dense causal shared-QK attention with the same
weights, it compiles the forward and the forward+backward (gradient of a
projected output w.r.t. weights and inputs) with jax.jit and reads XLA's
buffer plan (`.lower(...).compile().memory_analysis()`: temporaries, i.e. the
peak of intermediate buffers); it also counts score elements per head. The
LSH layer is also run and timed; the dense one is only compiled (its scores
alone are L² floats per head).

Run:
    .venv/bin/python benchmarks/lsh_memory.py                 # L=16384, prints a table
    .venv/bin/python benchmarks/lsh_memory.py --append        # ... and appends it to RESULTS.md
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trax_sparse import fastmath, shapes  # noqa: E402
from trax_sparse.layers import LSHSelfAttention  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'RESULTS.md')
MIB = 2.0 ** 20


def dense_causal_shared_qk(x, weights):
    """Full causal shared-QK attention (the L x L baseline): x [B, L, d] -> [B, L, d]."""
    w_qk, w_v, w_o = weights
    qk = jnp.einsum('bld,hdk->bhlk', x, w_qk)
    v = jnp.einsum('bld,hdk->bhlk', x, w_v)
    keys = qk / jnp.sqrt(jnp.sum(qk * qk, -1, keepdims=True) + qk.shape[-1] * 1e-6)
    scores = jnp.einsum('bhqk,bhlk->bhql', qk, keys)                   # [B, H, L, L]
    length = x.shape[1]
    positions = jnp.arange(length)
    scores = jnp.where(positions[:, None] == positions[None, :], -1e5, scores)
    scores = jnp.where(positions[None, :] > positions[:, None], -1e9, scores)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum('bhqv,hvm->bqm', jnp.einsum('bhql,bhlv->bhqv', probs, v), w_o)


def compiled_stats(fn, *args):
    """(temp bytes, argument bytes, output bytes, compile seconds) of jax.jit(fn)(*args)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    return (stats.temp_size_in_bytes, stats.argument_size_in_bytes, stats.output_size_in_bytes,
            seconds, compiled)


def timed(compiled, *args, repeats=2):
    jax.block_until_ready(compiled(*args))        # warm-up
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--length', type=int, default=16384)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--d_model', type=int, default=64)
    parser.add_argument('--n_heads', type=int, default=2)
    parser.add_argument('--d_head', type=int, default=32)
    parser.add_argument('--chunk_len', type=int, default=128)
    parser.add_argument('--n_buckets', type=int, default=128)
    parser.add_argument('--n_hashes', type=int, default=2)
    parser.add_argument('--append', action='store_true', help=f'append the table to {RESULTS}')
    args = parser.parse_args()
    command = '.venv/bin/python benchmarks/lsh_memory.py ' + ' '.join(sys.argv[1:])

    b, length, d, h = args.batch, args.length, args.d_model, args.n_heads
    layer = LSHSelfAttention(n_heads=h, d_qk=args.d_head, d_v=args.d_head, causal=True,
                             chunk_len=args.chunk_len, n_chunks_before=1, n_hashes=args.n_hashes,
                             n_buckets=args.n_buckets, mode='train')
    x = np.random.default_rng(0).normal(size=(b, length, d)).astype(np.float32)
    with fastmath.use_backend('numpy'):
        weights, state = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
    rng = np.array([0, 1], np.uint32)
    projection = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)

    with fastmath.use_backend('jax'):
        def lsh_forward(x_, w_):
            return layer.pure_fn(x_, w_, state, rng)[0]

        def lsh_loss(w_, x_):
            return jnp.sum(lsh_forward(x_, w_) * projection)

        def dense_loss(w_, x_):
            return jnp.sum(dense_causal_shared_qk(x_, w_) * projection)

        rows = []
        lsh_scores = args.n_hashes * length * args.chunk_len * 2     # (1 + n_chunks_before) = 2
        dense_scores = length * length
        for name, fn, call_args, run, scores in [
                ('LSH forward', lsh_forward, (x, weights), True, lsh_scores),
                ('LSH forward+backward', jax.grad(lsh_loss, argnums=(0, 1)), (weights, x), True,
                 lsh_scores),
                ('dense forward', dense_causal_shared_qk, (x, weights), False, dense_scores),
                ('dense forward+backward', jax.grad(dense_loss, argnums=(0, 1)), (weights, x),
                 False, dense_scores)]:
            temp, arg_bytes, out_bytes, compile_s, compiled = compiled_stats(fn, *call_args)
            run_s = timed(compiled, *call_args) if run else None
            rows.append((name, scores, temp, compile_s, run_s))
            print(f'{name}: temp {temp / MIB:.1f} MiB (args {arg_bytes / MIB:.1f} MiB, '
                  f'outputs {out_bytes / MIB:.1f} MiB), compile {compile_s:.1f} s'
                  + (f', run {run_s:.2f} s' if run_s is not None else ''), flush=True)

    lines = [
        '', '## LSH attention memory', '',
        f'Command: `{command.strip()}`  ',
        f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} '
        f'({jax.default_backend()}). B={b}, L={length}, d_model={d}, heads={h}, '
        f'd_qk=d_v={args.d_head}, causal, chunk_len={args.chunk_len}, n_chunks_before=1, '
        f'n_buckets={args.n_buckets}, n_hashes={args.n_hashes}, float32.  ',
        'temp = XLA temporaries of the jitted function (`memory_analysis().temp_size_in_bytes`); '
        'the dense baseline is compiled only, not run.', '',
        '| computation | score elements / head | temp MiB | compile s | run s |',
        '|---|---|---|---|---|',
    ]
    for name, scores, temp, compile_s, run_s in rows:
        lines.append(f'| {name} | {scores:,} | {temp / MIB:,.1f} | {compile_s:.1f} | '
                     + (f'{run_s:.2f}' if run_s is not None else 'not run') + ' |')
    ratio_fwd = rows[2][2] / max(rows[0][2], 1)
    ratio_bwd = rows[3][2] / max(rows[1][2], 1)
    lines += ['', f'Dense / LSH temporaries: {ratio_fwd:.1f}x (forward), {ratio_bwd:.1f}x '
                  f'(forward+backward); score elements per head: {dense_scores / lsh_scores:.0f}x.',
              '']
    table = '\n'.join(lines)
    print(table)
    if args.append:
        with open(RESULTS, 'a') as f:
            f.write(table)
        print(f'appended to {RESULTS}')


if __name__ == '__main__':
    main()
