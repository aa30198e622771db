"""Decoding-step time of DotProductCausalAttention vs the current length (batch 1).

A predict step should cost O(current length), not O(max_len). For each fill
position of a max_len-slot K/V cache this prints the best time of one
one-token step:
- numpy: our layer (reads cache[:, :pos+1], writes in place) vs attending over
  the whole buffer with a mask (Trax's way);
- jax (jit, state donated): our layer (one pass over the whole buffer with a
  mask, keys read in place: `attention_core.whole_buffer_attention`) vs the
  whole-buffer masked softmax written as Trax does (matmul with transposed keys).

Run:  .venv/bin/python benchmarks/attention_cache.py [--max_len 8192 --d 1024 --heads 16]
(OPENBLAS_NUM_THREADS defaults to 1 here.)
"""
import os

# One BLAS thread, as in the other decoding benchmarks: a step is memory bound, and on a
# shared 2-core machine a second OpenBLAS thread only adds hand-off waits.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from trax_sparse import fastmath, shapes  # noqa: E402
from trax_sparse import layers as tl  # noqa: E402
from trax_sparse.layers import attention_core  # noqa: E402
from trax_sparse.testing import cached_causal_attention  # noqa: E402


def _filled_state(args, pos: int, xp) -> tuple:
    """The layer's predict state with pos slots filled: k, v [B, H, max_len, d_h], pos."""
    rng = np.random.default_rng(0)
    shape = (args.batch, args.heads, args.max_len, args.d // args.heads)
    k = rng.normal(size=shape).astype(np.float32)
    v = rng.normal(size=shape).astype(np.float32)
    return xp.asarray(k), xp.asarray(v), xp.asarray(np.int32(pos))


def _best_ms(step, state, token, n_steps: int, block=lambda y: y) -> float:
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        y, state = step(token, state)
        block(y)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)  # best of n: the machine may be shared


def _whole_buffer_step(x, state, heads: int, write):
    """Trax's way: write the token, then one masked softmax over all max_len slots."""
    k, v, pos = state
    x_heads = attention_core.split_heads(x, heads)                     # [B, H, 1, d_h]
    k, v = write(k, x_heads, pos), write(v, x_heads, pos)
    y = cached_causal_attention(x_heads, k, v, pos)     # [B, H, 1, d_h]
    return attention_core.merge_heads(y), (k, v, pos + 1)


def bench_numpy(args, positions) -> list[tuple]:
    token = np.random.default_rng(1).normal(size=(args.batch, 1, args.d)).astype(np.float32)
    layer = tl.DotProductCausalAttention(args.heads, max_len=args.max_len, mode='predict')
    rows = []
    with fastmath.use_backend('numpy'):
        layer.init(shapes.signature((token, token, token)))

        def ours(x, state):
            return layer.pure_fn((x, x, x), (), state)

        def write_in_place(buffer, x_heads, pos):
            buffer[:, :, int(pos):int(pos) + 1] = x_heads
            return buffer

        def whole_buffer(x, state):
            return _whole_buffer_step(x, state, args.heads, write_in_place)

        for pos in positions:
            rows.append(('numpy', pos,
                         _best_ms(ours, _filled_state(args, pos, np), token, args.steps),
                         _best_ms(whole_buffer, _filled_state(args, pos, np), token,
                                    args.steps)))
    return rows


def bench_jax(args, positions) -> list[tuple]:
    import jax
    import jax.numpy as jnp
    token = np.random.default_rng(1).normal(size=(args.batch, 1, args.d)).astype(np.float32)
    layer = tl.DotProductCausalAttention(args.heads, max_len=args.max_len, mode='predict')
    rows = []
    with fastmath.use_backend('jax'):
        ours = jax.jit(lambda x, state: layer.pure_fn((x, x, x), (), state), donate_argnums=1)

        def write(buffer, x_heads, pos):
            return jax.lax.dynamic_update_slice(buffer, x_heads, (0, 0, pos, 0))

        whole_buffer = jax.jit(lambda x, state: _whole_buffer_step(x, state, args.heads, write),
                               donate_argnums=1)
        token = jnp.asarray(token)
        for pos in positions:
            times = []
            for step in (ours, whole_buffer):
                state = _filled_state(args, pos, jnp)
                y, state = step(token, state)        # compile + warm up
                y.block_until_ready()
                state = _filled_state(args, pos, jnp)
                times.append(_best_ms(step, state, token, args.steps,
                                        block=lambda a: a.block_until_ready()))
            rows.append(('jax', pos, times[0], times[1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--max_len', type=int, default=8192)
    parser.add_argument('--d', type=int, default=1024)
    parser.add_argument('--heads', type=int, default=16)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--backends', default='numpy,jax')
    args = parser.parse_args()
    positions = sorted({p for p in (0, 128, 1024, args.max_len // 2, args.max_len - args.steps - 1)
                        if 0 <= p <= args.max_len - args.steps - 1})
    rows = []
    if 'numpy' in args.backends:
        rows += bench_numpy(args, positions)
    if 'jax' in args.backends and fastmath.jax_available():
        rows += bench_jax(args, positions)
    print(f'one-token step, batch {args.batch}, d {args.d}, {args.heads} heads, '
          f'max_len {args.max_len} (best of {args.steps} steps)')
    print("| backend | pos | ours ms | whole buffer ms | whole / ours |\n|---|---|---|---|---|")
    for backend, pos, ours, whole in rows:
        print(f'| {backend} | {pos} | {ours:.3f} | {whole:.3f} | {whole / ours:.1f}x |')


if __name__ == '__main__':
    main()
