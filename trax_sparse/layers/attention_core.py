"""Attention math shared by the attention layers: heads, masks, softmax attention.

Plain functions on arrays of the live backend (NumPy or JAX), no weights:
- `split_heads` / `merge_heads`: [B, L, d] <-> [B, H, L, d/H].
- `causal_mask`, `padding_mask`: boolean masks, True = may attend.
- `dot_product_attention`: the reference scaled dot-product attention.
- `multihead_attention`: split heads, attend, merge heads.
- `cached_causal_attention`: new queries against a per-head K/V cache
  [B, H, N, d_h], one masked softmax over the whole buffer (the reference).
- `blockwise_cached_causal_attention`: the same result, visiting only the
  filled blocks of the cache with an online softmax, so a decoding step costs
  O(current length) instead of O(buffer size), also under jit.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> q = k = v = np.ones((1, 3, 4), np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     y = multihead_attention(q, k, v, causal_mask(3), n_heads=2)
    >>> y.shape
    (1, 3, 4)
"""
import functools
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


def blockwise_cached_causal_attention(q: Any, k_cache: Any, v_cache: Any, start: Any,
                                      block_size: int = 128, key_mask: Any = None) -> Any:
    """Same result as `cached_causal_attention`, reading only the filled cache blocks.

    Loops (fastmath.fori_loop) over the ceil((start+Lq)/block_size) key blocks
    that hold positions < start+Lq, keeping a running max and sum per query
    (online softmax), so the cost is O(start + Lq), not O(N). `start` may be a
    traced scalar (the trip count is then dynamic); shapes stay static. On JAX
    the loop always runs compiled (an eager while-loop would retrace per call).
    key_mask [B, N] (True = real key), if given, also hides padded keys.
    """
    if fastmath.is_jax():
        return _compiled_blockwise(fastmath.backend_name())(q, k_cache, v_cache, start,
                                                            int(block_size), key_mask)
    return _blockwise(q, k_cache, v_cache, start, int(block_size), key_mask)


@functools.lru_cache(maxsize=None)
def _compiled_blockwise(backend_name: str) -> Callable:
    # Called while `backend_name` is live; block_size is static.
    return fastmath.jit(_blockwise, static_argnums=(4,))


def _blockwise(q: Any, k_cache: Any, v_cache: Any, start: Any, block_size: int,
               key_mask: Any = None) -> Any:
    batch, n_heads, n_queries, d_head = q.shape
    n_slots = k_cache.shape[2]
    block = max(1, min(int(block_size), n_slots))
    q = q * (1.0 / math.sqrt(d_head))                                    # [B, H, Lq, d_h]
    query_positions = start + xnp.arange(n_queries)                      # [Lq]

    def visit_block(j, carry):
        running_max, running_sum, acc = carry   # [B,H,Lq,1], [B,H,Lq,1], [B,H,Lq,d_vh]
        block_start = j * block
        # The last block is shifted left to stay inside the cache; keys before
        # block_start were counted by earlier blocks and are masked here.
        read_start = xnp.clip(block_start, 0, n_slots - block)
        k_block = fastmath.dynamic_slice(k_cache, (0, 0, read_start, 0),
                                         (batch, n_heads, block, d_head))        # [B,H,blk,d_h]
        v_block = fastmath.dynamic_slice(v_cache, (0, 0, read_start, 0),
                                         (batch, n_heads, block, v_cache.shape[3]))
        key_positions = read_start + xnp.arange(block)                          # [blk]
        valid = ((key_positions[None, :] <= query_positions[:, None])
                 & (key_positions[None, :] >= block_start))                     # [Lq, blk]
        if key_mask is not None:
            real = fastmath.dynamic_slice(key_mask, (0, read_start), (batch, block))  # [B, blk]
            valid = valid[None, None] & (real != 0)[:, None, None, :]          # [B,1,Lq,blk]
        scores = xnp.matmul(q, xnp.swapaxes(k_block, -1, -2))                  # [B,H,Lq,blk]
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
    # Every query sees key 0, so total > 0; the floor only guards odd inputs.
    return acc / xnp.maximum(total, 1e-30)                                  # [B,H,Lq,d_vh]


__all__ = ['MASK_VALUE', 'attention_dropout', 'blockwise_cached_causal_attention',
           'cached_causal_attention', 'causal_mask', 'check_divisible', 'dot_product_attention',
           'merge_heads', 'multihead_attention', 'padding_mask', 'prefix_causal_mask',
           'split_heads']
