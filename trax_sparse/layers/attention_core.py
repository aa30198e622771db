"""Attention math shared by the attention layers: heads, masks, softmax attention.

Plain functions on arrays of the live backend (NumPy or JAX), no weights:
- `split_heads` / `merge_heads`: [B, L, d] <-> [B, H, L, d/H].
- `causal_mask`, `padding_mask`: boolean masks, True = may attend.
- `dot_product_attention`: the reference scaled dot-product attention.
- `multihead_attention`: split heads, attend, merge heads.
- `cached_attention_step`: the predict-mode read of a per-head K/V cache
  [B, H, N, d_h], one of two paths: with a concrete position (NumPy, eager JAX)
  `attend_filled` reads only the filled slots, O(current length); under jit
  `whole_buffer_attention` reads all N slots with a mask (fixed shapes).
  (The plain reference both are tested against: `trax_sparse.testing`.)

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> q = k = v = np.ones((1, 3, 4), np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     y = multihead_attention(q, k, v, causal_mask(3), n_heads=2)
    >>> y.shape
    (1, 3, 4)
"""
import math
from typing import Any

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like, float32_stats, stats_dtype

# Score given to masked positions. Finite, so a row with every key masked gets
# a uniform distribution instead of NaN (exp(-inf - -inf)).
MASK_VALUE = -1e9


def check_divisible(layer_name: str, d_feature: int, n_heads: int) -> None:
    """Raises a ValueError unless n_heads >= 1 divides d_feature."""
    if int(n_heads) < 1:
        raise ValueError(f'{layer_name}: n_heads must be >= 1, got {n_heads}')
    if int(d_feature) % int(n_heads):
        raise ValueError(f'{layer_name}: d_feature={d_feature} is not divisible by '
                         f'n_heads={n_heads}')


def split_heads(x: Any, n_heads: int) -> Any:
    """[B, L, d] -> [B, H, L, d/H]."""
    batch, length, d = x.shape
    x = x.reshape((batch, length, n_heads, d // n_heads))  # [B, L, H, d_h]
    return xnp.transpose(x, (0, 2, 1, 3))                    # [B, H, L, d_h]


def merge_heads(x: Any) -> Any:
    """[B, H, L, d_h] -> [B, L, H·d_h]."""
    batch, n_heads, length, d_head = x.shape
    x = xnp.transpose(x, (0, 2, 1, 3))                       # [B, L, H, d_h]
    return x.reshape((batch, length, n_heads * d_head))


def causal_mask(length: int) -> Any:
    """[L, L] bool: query i may attend to key j iff j <= i."""
    positions = xnp.arange(length)
    return positions[None, :] <= positions[:, None]


def prefix_causal_mask(start: Any, n_queries: int, n_keys: int) -> Any:
    """[Lq, Lk] bool for queries at positions start..start+Lq-1 over keys 0..Lk-1."""
    query_positions = start + xnp.arange(n_queries)          # [Lq]
    return xnp.arange(n_keys)[None, :] <= query_positions[:, None]


def padding_mask(mask: Any) -> Any:
    """Key padding mask [B, Lk] (bool or 0/1; True/1 = real token) -> [B, 1, 1, Lk] bool."""
    if len(mask.shape) != 2:
        raise ValueError(f'the padding mask must have shape [batch, length], got '
                         f'{tuple(mask.shape)}')
    return (mask != 0)[:, None, None, :]


def attention_dropout(probs: Any, rate: float, rng: Any) -> Any:
    """Drops attention probabilities with probability `rate` (inverted scaling)."""
    if rate == 0.0:
        return probs
    keep = fastmath.random.bernoulli(rng, 1.0 - rate, probs.shape)
    return xnp.where(keep, probs / (1.0 - rate), xnp.zeros_like(probs))


def dot_product_attention(q: Any, k: Any, v: Any, mask: Any = None, dropout: float = 0.0,
                          rng: Any = None) -> Any:
    """softmax(q kᵀ / √d_h, masked) v on head-split arrays.

    q [..., Lq, d_h], k [..., Lk, d_h], v [..., Lk, d_v]; mask (bool, True =
    attend) broadcastable to [..., Lq, Lk] or None. A row with every key masked
    averages all values (no NaN). Returns [..., Lq, d_v] in q's dtype; the softmax is
    computed in float32 and its probabilities cast to q's dtype.
    """
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = xnp.matmul(q, xnp.swapaxes(k, -1, -2))                 # [..., Lq, Lk]
    # Softmax statistics in float32; the gradient keeps only the probabilities (q's dtype).
    probs, _ = fastmath.softmax_with_lse(scores, mask, MASK_VALUE, q.dtype)
    probs = attention_dropout(probs, dropout, rng)
    return cast_like(xnp.matmul(probs, v), q)                  # [..., Lq, d_v]


def multihead_attention(q: Any, k: Any, v: Any, mask: Any, n_heads: int,
                        dropout: float = 0.0, rng: Any = None) -> Any:
    """q [B, Lq, d], k [B, Lk, d], v [B, Lk, d_v] -> [B, Lq, d_v] over n_heads heads.

    mask: bool broadcastable to [B, H, Lq, Lk] (e.g. [Lq, Lk] or [B, 1, 1, Lk]).
    """
    out = dot_product_attention(split_heads(q, n_heads), split_heads(k, n_heads),
                                split_heads(v, n_heads), mask, dropout, rng)  # [B, H, Lq, d_h]
    return merge_heads(out)


def cached_attention_step(q: Any, k_cache: Any, v_cache: Any, start: Any,
                          key_mask: Any = None) -> Any:
    """The predict-mode read: new queries against a K/V cache that already holds their keys.

    q [B, H, Lq, d_h] are the tokens at positions start..start+Lq-1; k_cache
    [B, H, N, d_h] and v_cache [B, H, N, d_vh] hold keys/values for positions
    0..start+Lq-1 (later slots are not attended to); key_mask [B, N] (True = real
    key), if given, also hides padded keys. Returns [B, H, Lq, d_vh]. Two paths:
    - the filled slots, so a step costs O(current length): with a concrete `start`
      (NumPy, eager JAX) `attend_filled` on the cache cut to its start+Lq filled slots;
      with a traced one (under jit) `filled_blocks_attention`, a loop over the filled
      blocks of `fastmath.tuning().attention_block_slots` slots;
    - the whole buffer (under jit, for a cache of at most one block, or one filled to
      `tuning().attention_whole_buffer_percent`, chosen by `fastmath.cond`):
      `whole_buffer_attention`, one fixed-shape pass over all N slots with a mask;
      unfilled slots must hold finite values (predict states start as zeros).
    Under jit, reading the whole buffer of a long, little-filled cache cost far more
    than its size (XLA:CPU, 16 heads of 64: 0.95 / 2.1 / 19.6 ms at 256 / 1024 / 4096
    slots against 0.50-0.64 ms for the filled blocks; docs/performance.md).

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath
        >>> q, cache = np.ones((1, 2, 1, 4), np.float32), np.ones((1, 2, 8, 4), np.float32)
        >>> with fastmath.use_backend('numpy'):
        ...     cached_attention_step(q, cache, cache, 3).shape
        (1, 2, 1, 4)
    """
    if fastmath.is_concrete(start):
        end = int(start) + q.shape[2]
        mask = None if key_mask is None else key_mask[:, :end]
        return attend_filled(q, k_cache[:, :, :end], v_cache[:, :, :end], int(start), mask)
    settings, n_slots, n_queries = fastmath.tuning(), k_cache.shape[2], q.shape[2]
    block = settings.attention_block_slots
    if n_slots <= block:
        return whole_buffer_attention(q, k_cache, v_cache, start, key_mask)

    def filled_blocks(q, k_cache, v_cache, start, key_mask):
        return filled_blocks_attention(q, k_cache, v_cache, start, block, key_mask)

    full_enough = (start + n_queries) * 100 >= settings.attention_whole_buffer_percent * n_slots
    return fastmath.cond(full_enough, whole_buffer_attention, filled_blocks,
                         q, k_cache, v_cache, start, key_mask)


def whole_buffer_attention(q: Any, k_cache: Any, v_cache: Any, start: Any,
                           key_mask: Any = None) -> Any:
    """The jit path of `cached_attention_step`: one dot per side over all N slots, invisible
    keys (later than the query, or masked) at zero probability, so a query whose keys are
    all masked gets 0. q [B, H, Lq, d_h], caches [B, H, N, d_h|d_vh] -> [B, H, Lq, d_vh].
    The prefix call holds scores [B, H, Lq, N], as eval holds [B, H, L, L]."""
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = float32_stats(head_scores(q, k_cache))                        # [B, H, Lq, N]
    probs, total = _visible_softmax(scores, start, key_mask)
    out = float32_stats(xnp.matmul(cast_like(probs, q), v_cache))          # [B, H, Lq, d_vh]
    return cast_like(out / xnp.maximum(total, 1e-30), q)    # all keys masked: 0


def filled_blocks_attention(q: Any, k_cache: Any, v_cache: Any, start: Any, block: int,
                            key_mask: Any = None) -> Any:
    """The jit path of `cached_attention_step` over the filled cache blocks only.

    Pass 1 writes q·k of each of the ceil((start+Lq)/block) filled blocks into scores
    [B, H, Lq, N]; one masked softmax; pass 2 adds probs·v block by block (fori_loop with
    a dynamic trip count: a slice and one dot per block and side). The last block is
    shifted left to stay inside the cache; keys the block before it counted are masked.
    """
    batch, n_heads, n_queries, d_head = q.shape
    n_slots, d_value = k_cache.shape[2], v_cache.shape[3]
    q = q * (1.0 / math.sqrt(d_head))                                    # [B, H, Lq, d_h]
    n_blocks = (start + n_queries + block - 1) // block

    def read_start(j: Any) -> Any:
        return xnp.clip(j * block, 0, n_slots - block)

    def score_block(j, scores):
        k_block = fastmath.dynamic_slice(k_cache, (0, 0, read_start(j), 0),
                                         (batch, n_heads, block, d_head))       # [B,H,blk,d_h]
        return fastmath.dynamic_update_slice(scores, float32_stats(head_scores(q, k_block)),
                                             (0, 0, 0, read_start(j)))           # [B,H,Lq,N]

    scores = fastmath.fori_loop(0, n_blocks, score_block,
                                xnp.full((batch, n_heads, n_queries, n_slots), MASK_VALUE,
                                         stats_dtype(q.dtype)))
    probs, total = _visible_softmax(scores, start, key_mask)                  # [B,H,Lq,N|1]
    probs = cast_like(probs, q)

    def value_block(j, acc):
        first = read_start(j)
        v_block = fastmath.dynamic_slice(v_cache, (0, 0, first, 0),
                                         (batch, n_heads, block, d_value))      # [B,H,blk,d_v]
        p_block = fastmath.dynamic_slice(probs, (0, 0, 0, first),
                                         (batch, n_heads, n_queries, block))    # [B,H,Lq,blk]
        p_block = xnp.where(first + xnp.arange(block) >= j * block, p_block, 0.0)
        return acc + float32_stats(xnp.matmul(p_block, v_block))              # [B,H,Lq,d_v]

    acc = fastmath.fori_loop(0, n_blocks, value_block,
                             xnp.zeros((batch, n_heads, n_queries, d_value),
                                       stats_dtype(q.dtype)))
    return cast_like(acc / xnp.maximum(total, 1e-30), q)   # all keys masked: 0


def head_scores(q: Any, keys: Any) -> Any:
    """q [B, H, Lq, d_h] · keys [B, H, Lk, d_h] -> [B, H, Lq, Lk], contracting the keys' last
    axis in place: written as an einsum, XLA reads the cache rows as they lie, where
    matmul(q, swapaxes(keys)) made XLA:CPU copy a transposed cache first."""
    return xnp.einsum('bhqd,bhkd->bhqk', q, keys)


def _visible_softmax(scores: Any, start: Any, key_mask: Any) -> tuple[Any, Any]:
    """scores [B, H, Lq, N] of queries at start.. -> (unnormalized probs, zero where a key is
    invisible (later than the query, or masked), and their sum [B, H, Lq, 1])."""
    visible = prefix_causal_mask(start, scores.shape[2], scores.shape[3])   # [Lq, N]
    if key_mask is not None:
        visible = visible[None, None] & padding_mask(key_mask)              # [B, 1, Lq, N]
    scores = xnp.where(visible, scores, MASK_VALUE)
    probs = xnp.where(visible, xnp.exp(scores - xnp.max(scores, axis=-1, keepdims=True)), 0.0)
    return probs, xnp.sum(probs, axis=-1, keepdims=True)


def attend_filled(q: Any, keys: Any, values: Any, start: int, key_mask: Any = None) -> Any:
    """q [B, H, Lq, d_h] at positions start.. against exactly the filled keys [B, H, start+Lq, d_h].

    The concrete-position path of `cached_attention_step`: one batched matmul per
    side over the heads' contiguous cache rows, and for a single query (Lq = 1, no
    key mask) no mask at all, since every filled key is visible. A large cache
    (`fastmath.tuning().parallel_gather_min_bytes`) is read by heads on NumPy's worker
    threads (`fastmath.in_parts`). values [B, H, start+Lq, d_vh] -> [B, H, Lq, d_vh].
    """
    n_bytes = (keys.size + values.size) * keys.dtype.itemsize      # a long cache: by heads
    parts = fastmath.in_parts(
        lambda heads: _attend_filled_heads(q[:, heads], keys[:, heads], values[:, heads],
                                           start, key_mask), q.shape[1], n_bytes)
    return parts[0] if len(parts) == 1 else xnp.concatenate(parts, axis=1)


def _attend_filled_heads(q: Any, keys: Any, values: Any, start: int, key_mask: Any) -> Any:
    """`attend_filled` for some of the heads."""
    n_queries, n_keys = q.shape[2], keys.shape[2]
    scores = float32_stats(xnp.matmul(q * (1.0 / math.sqrt(q.shape[-1])),
                                      xnp.swapaxes(keys, -1, -2)))       # [B, H, Lq, Lk]
    visible = None
    if n_queries > 1:
        visible = prefix_causal_mask(start, n_queries, n_keys)          # [Lq, Lk]
    if key_mask is not None:
        real = padding_mask(key_mask)                                    # [B, 1, 1, Lk]
        visible = real if visible is None else visible[None, None] & real
    if visible is not None:
        scores = xnp.where(visible, scores, MASK_VALUE)
    probs = xnp.exp(scores - xnp.max(scores, axis=-1, keepdims=True))   # [B, H, Lq, Lk]
    total = xnp.sum(probs, axis=-1, keepdims=True)                      # [B, H, Lq, 1]
    out = float32_stats(xnp.matmul(cast_like(probs, q), values))       # [B, H, Lq, d_vh]
    return cast_like(out / total, q)


__all__ = ['MASK_VALUE', 'attend_filled', 'attention_dropout', 'cached_attention_step',
           'causal_mask', 'filled_blocks_attention', 'check_divisible', 'dot_product_attention', 'head_scores',
           'merge_heads', 'multihead_attention', 'padding_mask', 'prefix_causal_mask',
           'split_heads', 'whole_buffer_attention']
