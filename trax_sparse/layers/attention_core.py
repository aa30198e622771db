"""Attention math shared by the attention layers: heads, masks, softmax attention.

Plain functions on arrays of the live backend (NumPy or JAX), no weights:
- `split_heads` / `merge_heads`: [B, L, d] <-> [B, H, L, d/H].
- `causal_mask`, `padding_mask`: boolean masks, True = may attend.
- `dot_product_attention`: the reference scaled dot-product attention.
- `multihead_attention`: split heads, attend, merge heads.
- `cached_causal_attention`: new queries against a per-head K/V cache
  [B, H, N, d_h], one masked softmax over the whole buffer (the reference).
- `cached_attention_step`: the predict-mode read, O(current length): on a
  concrete position `attend_filled` (the cache cut to its filled slots, one
  batched matmul per side), under jit `blockwise_cached_causal_attention`
  (visits only the filled cache blocks, also with a traced position).

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
from typing import Any, Callable

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp

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
    averages all values (no NaN). Returns [..., Lq, d_v].
    """
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = xnp.matmul(q, xnp.swapaxes(k, -1, -2))           # [..., Lq, Lk]
    if mask is not None:
        scores = xnp.where(mask, scores, xnp.full_like(scores, MASK_VALUE))
    probs = xnp.exp(scores - fastmath.logsumexp(scores, axis=-1, keepdims=True))
    probs = attention_dropout(probs, dropout, rng)
    return xnp.matmul(probs, v)                                # [..., Lq, d_v]


def multihead_attention(q: Any, k: Any, v: Any, mask: Any, n_heads: int,
                        dropout: float = 0.0, rng: Any = None) -> Any:
    """q [B, Lq, d], k [B, Lk, d], v [B, Lk, d_v] -> [B, Lq, d_v] over n_heads heads.

    mask: bool broadcastable to [B, H, Lq, Lk] (e.g. [Lq, Lk] or [B, 1, 1, Lk]).
    """
    out = dot_product_attention(split_heads(q, n_heads), split_heads(k, n_heads),
                                split_heads(v, n_heads), mask, dropout, rng)  # [B, H, Lq, d_h]
    return merge_heads(out)


def cached_causal_attention(q: Any, k_cache: Any, v_cache: Any, start: Any,
                            key_mask: Any = None) -> Any:
    """New queries against a per-head K/V cache, one masked softmax over the whole cache.

    q [B, H, Lq, d_h] are the tokens at positions start..start+Lq-1; k_cache
    [B, H, N, d_h] and v_cache [B, H, N, d_vh] hold keys/values for positions
    0..start+Lq-1 (later slots are ignored). Returns [B, H, Lq, d_vh]. Cost
    O(N): the reference for the blockwise version, and the NumPy decoding path
    on a cache cut to start+Lq slots. key_mask [B, N] (True = real key), if
    given, also hides padded keys.
    """
    mask = prefix_causal_mask(start, q.shape[2], k_cache.shape[2])     # [Lq, N]
    if key_mask is not None:
        mask = mask[None, None] & padding_mask(key_mask)                 # [B, 1, Lq, N]
    return dot_product_attention(q, k_cache, v_cache, mask)


def cached_attention_step(q: Any, k_cache: Any, v_cache: Any, start: Any,
                          block_size: int = 128, key_mask: Any = None) -> Any:
    """The predict-mode read: new queries against the filled part of a K/V cache.

    Arguments as in `cached_causal_attention` (the cache already holds the new
    keys). With a concrete `start` (NumPy, eager JAX) the cache is cut to the
    start+Lq filled slots and attended in one pass (`attend_filled`). With a
    traced one (under jit) it is `traced_attention_step`: the blockwise kernel
    while the cache is less than WHOLE_BUFFER_FILL full, else one pass over the
    whole buffer. Either way the cost is O(start + Lq) (at most 1/WHOLE_BUFFER_FILL
    times the filled part).
    """
    if fastmath.is_concrete(start):
        end = int(start) + q.shape[2]
        mask = None if key_mask is None else key_mask[:, :end]
        return attend_filled(q, k_cache[:, :, :end], v_cache[:, :, :end], int(start), mask)
    return traced_attention_step(q, k_cache, v_cache, start, block_size, key_mask)


# Under jit, once start+Lq fills this fraction of the cache one pass over the whole buffer
# is cheaper than visiting the filled blocks: on XLA:CPU every block is copied out of the
# cache before its dot (a dynamic slice is a copy), while the whole buffer feeds the dots
# directly. Measured (2-core CPU, pos 512 of 1024 slots): blockwise costs ~2.5x per key.
WHOLE_BUFFER_FILL = 0.4


def traced_attention_step(q: Any, k_cache: Any, v_cache: Any, start: Any, block_size: int = 128,
                          key_mask: Any = None) -> Any:
    """`cached_attention_step` for a traced `start`: blockwise while the cache is less than
    WHOLE_BUFFER_FILL full, else the whole buffer (`whole_buffer_attention`), chosen by
    fastmath.cond. A long prefix (B·H·Lq·N > TWO_PASS_MAX_SCORES) always goes blockwise
    with the online softmax. A cache of at most one block is always read whole: its one
    block would be the whole buffer, copied out first. The whole-buffer pass multiplies
    the unfilled slots by zero probabilities, so they must hold finite values (predict
    states start as zeros)."""
    batch, n_heads, n_queries, _ = q.shape
    n_slots = k_cache.shape[2]
    if batch * n_heads * n_queries * n_slots > TWO_PASS_MAX_SCORES:
        return blockwise_cached_causal_attention(q, k_cache, v_cache, start, block_size,
                                                 key_mask, two_pass=False)
    if n_slots <= block_size:
        return whole_buffer_attention(q, k_cache, v_cache, start, key_mask)

    def blockwise(q, k_cache, v_cache, start, key_mask):
        return blockwise_cached_causal_attention(q, k_cache, v_cache, start, block_size,
                                                 key_mask, two_pass=True)

    full_enough = (start + n_queries) >= WHOLE_BUFFER_FILL * n_slots
    return fastmath.cond(full_enough, whole_buffer_attention, blockwise,
                         q, k_cache, v_cache, start, key_mask)


def whole_buffer_attention(q: Any, k_cache: Any, v_cache: Any, start: Any,
                           key_mask: Any = None) -> Any:
    """`cached_causal_attention` with the blockwise kernels' handling of invisible keys (zero
    probability, so a query whose keys are all masked gets 0): one dot per side over all N
    slots. q [B, H, Lq, d_h], caches [B, H, N, d_h|d_vh] -> [B, H, Lq, d_vh]."""
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = head_scores(q, k_cache)                                        # [B, H, Lq, N]
    probs, total = _visible_softmax(scores, start, key_mask)
    return xnp.matmul(probs, v_cache) / xnp.maximum(total, 1e-30)           # [B, H, Lq, d_vh]


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

    The decoding fast path of `cached_causal_attention` (same result): one
    batched matmul per side over the heads' contiguous cache rows, and for a
    single query (Lq = 1, no key mask) no mask at all, since every filled key is
    visible. A cache of more than 8 MB is read by heads on NumPy's worker threads
    (`fastmath.in_parts`). values [B, H, start+Lq, d_vh] -> [B, H, Lq, d_vh].
    """
    n_bytes = (keys.size + values.size) * keys.dtype.itemsize      # a long cache: by heads
    parts = fastmath.in_parts(
        lambda heads: _attend_filled_heads(q[:, heads], keys[:, heads], values[:, heads],
                                           start, key_mask), q.shape[1], n_bytes)
    return parts[0] if len(parts) == 1 else xnp.concatenate(parts, axis=1)


def _attend_filled_heads(q: Any, keys: Any, values: Any, start: int, key_mask: Any) -> Any:
    """`attend_filled` for some of the heads."""
    n_queries, n_keys = q.shape[2], keys.shape[2]
    scores = xnp.matmul(q * (1.0 / math.sqrt(q.shape[-1])),
                        xnp.swapaxes(keys, -1, -2))                      # [B, H, Lq, Lk]
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
    return xnp.matmul(probs, values) / total                            # [B, H, Lq, d_vh]


# Up to this many scores (B·H·Lq·N) the jitted kernel keeps them all ([B, H, Lq, N]) and
# reads each cache block with one plain dot per side (`_two_pass`); a longer prefix runs
# the online softmax (`_online`), which never holds more than one block of scores.
TWO_PASS_MAX_SCORES = 1 << 22


def blockwise_cached_causal_attention(q: Any, k_cache: Any, v_cache: Any, start: Any,
                                      block_size: int = 128, key_mask: Any = None,
                                      two_pass: bool | None = None) -> Any:
    """Same result as `cached_causal_attention`, reading only the filled cache blocks.

    Loops (fastmath.fori_loop) over the ceil((start+Lq)/block_size) key blocks
    that hold positions < start+Lq, so the cost is O(start + Lq), not O(N).
    `start` may be a traced scalar (the trip count is then dynamic); shapes stay
    static. On JAX the loops always run compiled (an eager while-loop would
    retrace per call). key_mask [B, N] (True = real key), if given, also hides
    padded keys. two_pass: True = `_two_pass` (scores of all N slots kept, one
    dot per block and side: the fast decoding step on XLA:CPU), False = `_online`
    (running max and sum per query, one block of scores at a time), None = two
    passes while B·H·Lq·N <= TWO_PASS_MAX_SCORES.
    """
    batch, n_heads, n_queries, _ = q.shape
    if two_pass is None:
        two_pass = batch * n_heads * n_queries * k_cache.shape[2] <= TWO_PASS_MAX_SCORES
    # Compiled once per backend (NumPy: as is); an eager JAX loop would retrace per call.
    kernel = fastmath.cached_jit(_blockwise_kernel, bool(two_pass), static_argnums=(4,))
    return kernel(q, k_cache, v_cache, start, int(block_size), key_mask)


def _blockwise_kernel(two_pass: bool) -> Callable:
    return _two_pass if two_pass else _online


def _block_reader(n_slots: int, block: int) -> Callable[[Any], tuple[Any, Any]]:
    """j -> (read_start, first): block j covers keys [j·block, (j+1)·block); the last block is
    shifted left to read_start so it stays inside the cache, and keys before `first`
    (= j·block) were counted by the block before it."""
    def reader(j: Any) -> tuple[Any, Any]:
        first = j * block
        return xnp.clip(first, 0, n_slots - block), first
    return reader


def _two_pass(q: Any, k_cache: Any, v_cache: Any, start: Any, block_size: int,
              key_mask: Any = None) -> Any:
    """Pass 1 writes q·k of every filled block into scores [B, H, Lq, N]; one masked softmax;
    pass 2 adds probs·v block by block. Per block and side: a slice and one dot."""
    batch, n_heads, n_queries, d_head = q.shape
    n_slots, d_value = k_cache.shape[2], v_cache.shape[3]
    block = max(1, min(int(block_size), n_slots))
    read = _block_reader(n_slots, block)
    q = q * (1.0 / math.sqrt(d_head))                                    # [B, H, Lq, d_h]
    n_blocks = (start + n_queries + block - 1) // block

    def score_block(j, scores):
        read_start, _ = read(j)
        k_block = fastmath.dynamic_slice(k_cache, (0, 0, read_start, 0),
                                         (batch, n_heads, block, d_head))         # [B,H,blk,d_h]
        block_scores = head_scores(q, k_block)                                  # [B,H,Lq,blk]
        return fastmath.dynamic_update_slice(scores, block_scores, (0, 0, 0, read_start))

    scores = fastmath.fori_loop(0, n_blocks, score_block,
                                xnp.full((batch, n_heads, n_queries, n_slots), MASK_VALUE,
                                         q.dtype))                               # [B,H,Lq,N]
    probs, total = _visible_softmax(scores, start, key_mask)                    # [B,H,Lq,N|1]

    def value_block(j, acc):
        read_start, first = read(j)
        v_block = fastmath.dynamic_slice(v_cache, (0, 0, read_start, 0),
                                         (batch, n_heads, block, d_value))        # [B,H,blk,d_v]
        p_block = fastmath.dynamic_slice(probs, (0, 0, 0, read_start),
                                         (batch, n_heads, n_queries, block))      # [B,H,Lq,blk]
        p_block = xnp.where(read_start + xnp.arange(block) >= first, p_block, 0.0)
        return acc + xnp.matmul(p_block, v_block)                               # [B,H,Lq,d_v]

    acc = fastmath.fori_loop(0, n_blocks, value_block,
                             xnp.zeros((batch, n_heads, n_queries, d_value), q.dtype))
    # Every query sees key 0 unless the key mask hides all its keys (then the output is 0).
    return acc / xnp.maximum(total, 1e-30)                                      # [B,H,Lq,d_v]


def _online(q: Any, k_cache: Any, v_cache: Any, start: Any, block_size: int,
            key_mask: Any = None) -> Any:
    """One pass with a running max and sum per query (online softmax): one block of scores."""
    batch, n_heads, n_queries, d_head = q.shape
    n_slots = k_cache.shape[2]
    block = max(1, min(int(block_size), n_slots))
    read = _block_reader(n_slots, block)
    q = q * (1.0 / math.sqrt(d_head))                                    # [B, H, Lq, d_h]
    query_positions = start + xnp.arange(n_queries)                      # [Lq]

    def visit_block(j, carry):
        running_max, running_sum, acc = carry   # [B,H,Lq,1], [B,H,Lq,1], [B,H,Lq,d_vh]
        read_start, first = read(j)
        k_block = fastmath.dynamic_slice(k_cache, (0, 0, read_start, 0),
                                         (batch, n_heads, block, d_head))        # [B,H,blk,d_h]
        v_block = fastmath.dynamic_slice(v_cache, (0, 0, read_start, 0),
                                         (batch, n_heads, block, v_cache.shape[3]))
        key_positions = read_start + xnp.arange(block)                          # [blk]
        valid = ((key_positions[None, :] <= query_positions[:, None])
                 & (key_positions[None, :] >= first))                           # [Lq, blk]
        if key_mask is not None:
            real = fastmath.dynamic_slice(key_mask, (0, read_start), (batch, block))  # [B, blk]
            valid = valid[None, None] & (real != 0)[:, None, None, :]          # [B,1,Lq,blk]
        scores = head_scores(q, k_block)                                       # [B,H,Lq,blk]
        scores = xnp.where(valid, scores, xnp.full_like(scores, MASK_VALUE))
        new_max = xnp.maximum(running_max, xnp.max(scores, axis=-1, keepdims=True))
        probs = xnp.where(valid, xnp.exp(scores - new_max), xnp.zeros_like(scores))
        correction = xnp.exp(running_max - new_max)                             # [B,H,Lq,1]
        running_sum = running_sum * correction + xnp.sum(probs, axis=-1, keepdims=True)
        acc = acc * correction + xnp.matmul(probs, v_block)                     # [B,H,Lq,d_vh]
        return new_max, running_sum, acc

    n_blocks = (start + n_queries + block - 1) // block
    init = (xnp.full((batch, n_heads, n_queries, 1), MASK_VALUE, q.dtype),
            xnp.zeros((batch, n_heads, n_queries, 1), q.dtype),
            xnp.zeros((batch, n_heads, n_queries, v_cache.shape[3]), q.dtype))
    _, total, acc = fastmath.fori_loop(0, n_blocks, visit_block, init)
    # Every query sees key 0 unless the key mask hides all its keys (then the output is 0).
    return acc / xnp.maximum(total, 1e-30)                                  # [B,H,Lq,d_vh]


__all__ = ['MASK_VALUE', 'TWO_PASS_MAX_SCORES', 'WHOLE_BUFFER_FILL', 'attend_filled',
           'attention_dropout', 'blockwise_cached_causal_attention', 'cached_attention_step',
           'head_scores', 'traced_attention_step', 'whole_buffer_attention',
           'cached_causal_attention', 'causal_mask', 'check_divisible', 'dot_product_attention',
           'merge_heads', 'multihead_attention', 'padding_mask', 'prefix_causal_mask',
           'split_heads']
