"""Predict mode (causal decoding) of LSHSelfAttention: the cache and the decoding rule.

Cache (the layer's state in predict mode), M = predict_mem_len:
    keys      [B, H, M, d_qk]  unit-normalised shared-QK keys of every cached position
    values    [B, H, M, d_v]
    buckets   [B, H, n_hashes, M] int32: each cached position's bucket + 1 per
              round (0: an empty slot, or a position masked out by the input
              mask; so the empty cache is all zeros, as every predict state)
    rotations [H, d_qk, n_hashes, Σ f/2]: the hash of this sequence, drawn
              from the call's rng when pos == 0 and kept afterwards
    pos       int32 scalar: the number of cached positions

Calls:
- at pos == 0, a call with T > 1 tokens (a prefix) is computed exactly like
  eval (chunked LSH attention over the prefix, padded internally) and fills
  the cache;
- every other token (T == 1, or any token of a call made after the start) is
  decoded one at a time with the DECODING RULE:
    the new token (at position p, written to the cache first) attends to at
    most `budget` cached positions <= p: first those that share a bucket with
    it in at least one round (itself included), most recent first; if fewer
    than `budget` share a bucket, the rest of the budget goes to the most
    recent other cached positions (as Trax's priority rule). Scores and masks
    are those of eval (its own position gets -1e5, masked-out positions are
    never chosen).
  When the budget covers the sequence (budget >= p + 1) every cached position
  is attended, which is eval's result whenever eval's chunk windows cover the
  sequence (e.g. chunk_len >= length): then predict == eval exactly.
- pos + T > M is an error (a ValueError when pos is concrete; the decoding
  functions check lengths before they start; under jit the outputs of an
  overflowing call are NaN).

Cost: the cache is written with `fastmath.update_cache` (in place on NumPy:
the state passed in is updated and returned, copy it first to keep the old
one; donated under jit on JAX). With a concrete pos (NumPy, eager JAX) a step
reads only the filled part of the cache, O(p) (scores for p positions, a
partial top-k for the budget); under jit shapes are static: the step ranks
all M slots (O(M)) and attends to `budget` of them.
"""
from typing import Any

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like, float32_stats
from trax_sparse.layers.attention_core import MASK_VALUE
from trax_sparse.layers.base import note_predict_use
from trax_sparse.layers.lsh.core import (SELF_VALUE, LSHSettings, combine_rounds,
                                         lsh_attention_rounds, padded_length, project_output,
                                         project_qkv, with_settings)
from trax_sparse.layers.lsh.hashing import hash_rotations, hash_vectors, normalize_keys

EMPTY_BUCKET = -1   # a bucket id meaning "no key here"; stored as EMPTY_BUCKET + 1 = 0


def init_cache(batch: int, d_v: int, s: LSHSettings, dtype: Any) -> tuple:
    """An empty cache (keys, values, buckets + 1, rotations, pos), all zeros."""
    return (xnp.zeros((batch, s.n_heads, s.mem_len, s.d_qk), dtype),
            xnp.zeros((batch, s.n_heads, s.mem_len, d_v), dtype),
            xnp.zeros((batch, s.n_heads, s.n_hashes, s.mem_len), xnp.int32),
            xnp.zeros((s.n_heads, s.d_qk, s.n_hashes, sum(f // 2 for f in s.bucket_factors)),
                      xnp.float32),
            xnp.zeros((), xnp.int32))


def _write(buffer: Any, update: Any, start: Any, axis: int) -> Any:
    """Writes `update` into `buffer` at `start` along `axis` (in place on NumPy)."""
    return fastmath.update_cache(buffer, update.astype(buffer.dtype), start, axis)


def _fresh_rotations(rng: Any, s: LSHSettings) -> Any:
    return hash_rotations(rng, s.n_heads, s.d_qk, s.n_hashes, s.bucket_factors)


def prefix_forward(x: Any, valid: Any, weights: tuple, cache: tuple, rng: Any, *,
                   settings: LSHSettings) -> tuple[Any, tuple]:
    """A prefix x [B, T, d] at pos == 0: eval's computation, then the cache holds it."""
    s = settings
    keys, values, buckets, _, _ = cache
    w_qk, w_v, w_o = weights
    length = x.shape[1]
    extra = padded_length(length, s.chunk_len) - length
    rotations = _fresh_rotations(rng, s)
    x_pad = xnp.pad(x, ((0, 0), (0, extra), (0, 0)))                       # [B, Lp, d]
    valid_pad = xnp.pad(valid, ((0, 0), (0, extra)))                        # [B, Lp]
    qk, v = project_qkv(x_pad, w_qk, w_v)                                   # [B, H, Lp, dk]
    hashed = hash_vectors(qk, rotations, s.bucket_factors)                  # [B, H, R, Lp]
    valid_bhrl = valid_pad[:, None, None, :]
    o_rounds, lse = lsh_attention_rounds(
        qk, v, xnp.where(valid_bhrl, hashed, s.n_buckets), valid_pad, True, s.chunk_len,
        s.n_chunks_before, s.n_chunks_after)
    o, _ = combine_rounds(o_rounds, lse)
    y = project_output(o, w_o)[:, :length]                                  # [B, T, d]
    keys = _write(keys, normalize_keys(qk[:, :, :length]), 0, axis=2)
    values = _write(values, v[:, :, :length], 0, axis=2)
    new_buckets = xnp.where(valid_bhrl, hashed, EMPTY_BUCKET)[..., :length]
    buckets = _write(buckets, new_buckets.astype(xnp.int32) + 1, 0, axis=3)
    return y, (keys, values, buckets, rotations, xnp.asarray(length, xnp.int32))


def _top_positions(priority: Any, k: int) -> Any:
    """Indices [B, H, k] of the k largest priorities (any order)."""
    n = priority.shape[-1]
    if k >= n:
        return xnp.broadcast_to(xnp.arange(n, dtype=xnp.int32), priority.shape)
    return fastmath.top_k(priority, k)[1]                                   # O(n + k log k)


def step_forward(x: Any, valid: Any, weights: tuple, cache: tuple, *,
                 settings: LSHSettings) -> tuple[Any, tuple]:
    """One token x [B, 1, d] at position pos with the decoding rule (see module doc)."""
    s = settings
    keys, values, buckets, rotations, pos = cache
    w_qk, w_v, w_o = weights
    qk, v = project_qkv(x, w_qk, w_v)                                       # [B, H, 1, dk]
    new_bucket = hash_vectors(qk, rotations, s.bucket_factors)              # [B, H, R, 1]
    new_bucket = xnp.where(valid[:, None, None, :], new_bucket, EMPTY_BUCKET)
    keys = _write(keys, normalize_keys(qk), pos, axis=2)
    values = _write(values, v, pos, axis=2)
    buckets = _write(buckets, new_bucket.astype(xnp.int32) + 1, pos, axis=3)

    n = int(pos) + 1 if fastmath.is_concrete(pos) else s.mem_len   # only the filled part
    cached_keys, cached_values = keys[:, :, :n], values[:, :, :n]           # [B, H, n, d]
    cached_buckets = buckets[..., :n] - 1                                   # [B, H, R, n]
    slots = xnp.arange(n, dtype=xnp.int32)
    eligible = (slots <= pos) & (cached_buckets[:, :, 0] != EMPTY_BUCKET)   # [B, H, n]
    shares = xnp.any(cached_buckets == new_bucket, axis=2) & eligible        # [B, H, n]
    priority = xnp.where(eligible, slots + xnp.where(shares, s.mem_len, 0), -1)
    chosen = _top_positions(priority, min(s.budget, n))                     # [B, H, K]

    chosen_keys = xnp.take_along_axis(cached_keys, chosen[..., None], axis=2)     # [B,H,K,dk]
    chosen_values = xnp.take_along_axis(cached_values, chosen[..., None], axis=2)  # [B,H,K,dv]
    chosen_priority = xnp.take_along_axis(priority, chosen, axis=2)[:, :, None, :]
    scores = float32_stats(xnp.matmul(qk, xnp.swapaxes(chosen_keys, -1, -2)))  # [B, H, 1, K]
    scores = xnp.where((chosen == pos)[:, :, None, :], SELF_VALUE, scores)
    scores = xnp.where(chosen_priority < 0, MASK_VALUE, scores)
    probs = xnp.exp(scores - fastmath.logsumexp(scores, axis=-1, keepdims=True))
    o = cast_like(xnp.matmul(cast_like(probs, qk), chosen_values), qk)      # [B, H, 1, dv]
    y = project_output(o, w_o)                                              # [B, 1, d]
    return y, (keys, values, buckets, rotations, pos + 1)


def first_or_next_step(x: Any, valid: Any, weights: tuple, cache: tuple, rng: Any, *,
                       settings: LSHSettings) -> tuple[Any, tuple]:
    """One token; at pos == 0 the sequence's rotations are drawn from `rng` first."""
    rotations, pos = cache[3], cache[4]
    if fastmath.is_concrete(pos):
        if int(pos) == 0:
            rotations = _fresh_rotations(rng, settings)
    else:
        rotations = xnp.where(pos == 0, _fresh_rotations(rng, settings), rotations)
    return step_forward(x, valid, weights, cache[:3] + (rotations, pos), settings=settings)


def steps_forward(x: Any, valid: Any, weights: tuple, cache: tuple, *,
                  settings: LSHSettings) -> tuple[Any, tuple]:
    """Tokens x [B, T, d] after the start, decoded one by one (fastmath.scan over T)."""
    def step(carry, token):
        x_t, valid_t = token                                                # [B, 1, d], [B, 1]
        y_t, carry = step_forward(x_t, valid_t, weights, carry, settings=settings)
        return carry, y_t
    tokens = (xnp.swapaxes(x, 0, 1)[:, :, None, :], xnp.swapaxes(valid, 0, 1)[:, :, None])
    cache, ys = fastmath.scan(step, cache, tokens)                          # ys [T, B, 1, d]
    return xnp.swapaxes(ys[:, :, 0, :], 0, 1), cache


def _prefix_or_steps(x: Any, valid: Any, weights: tuple, cache: tuple, rng: Any, *,
                     settings: LSHSettings) -> tuple[Any, tuple]:
    """T > 1 tokens with a traced pos: the prefix path at pos == 0, else token by token."""
    return fastmath.cond(
        cache[4] == 0, lambda c: prefix_forward(x, valid, weights, c, rng, settings=settings),
        lambda c: steps_forward(x, valid, weights, c, settings=settings), cache)


def predict_forward(x: Any, valid: Any, weights: tuple, cache: tuple, rng: Any,
                    s: LSHSettings) -> tuple[Any, tuple]:
    """x [B, T, d], valid [B, T] bool -> (y [B, T, d], new cache); see the module doc."""
    length = x.shape[1]
    pos = cache[4]
    note_predict_use(s.layer_name, s.mem_len, length)
    concrete = fastmath.is_concrete(pos)
    if concrete and int(pos) + length > s.mem_len:
        raise ValueError(f'{s.layer_name}: predict cache overflow: {int(pos)} cached positions + '
                         f'{length} new tokens > predict_mem_len={s.mem_len}; use a larger '
                         f'predict_mem_len')
    if length == 1:
        y, cache = with_settings(first_or_next_step, s)(x, valid, weights, cache, rng)
    elif concrete and int(pos) == 0:
        y, cache = with_settings(prefix_forward, s)(x, valid, weights, cache, rng)
    elif concrete:
        y, cache = with_settings(steps_forward, s)(x, valid, weights, cache)
    else:
        y, cache = with_settings(_prefix_or_steps, s)(x, valid, weights, cache, rng)
    if not concrete:   # under jit: an overflowing call returns NaN (no error can be raised)
        y = xnp.where(pos + length > s.mem_len, xnp.nan, y)
    return y, cache


__all__ = ['EMPTY_BUCKET', 'first_or_next_step', 'init_cache', 'predict_forward',
           'prefix_forward', 'step_forward', 'steps_forward']
