"""A plain, loop-by-loop LSH self-attention: the test oracle of LSHSelfAttention.

Same math as the fast path (trax_sparse/layers/lsh/core.py), written independently and slowly in
float64 NumPy: for each example, head and hash round it hashes every
position, sorts positions by (bucket, position), and for each query lists the
keys of its chunk window one by one. Use it for tiny inputs only.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(1, 4, 3))
    >>> weights = (rng.normal(size=(1, 3, 2)), rng.normal(size=(1, 3, 2)),
    ...            rng.normal(size=(1, 2, 3)))
    >>> rotations = rng.normal(size=(1, 2, 2, 2))        # [H, d_qk, n_hashes, n_buckets/2]
    >>> lsh_attention_reference(x, weights, rotations, causal=True, chunk_len=2).shape
    (1, 4, 3)
"""
import math
from typing import Any

import numpy as onp


def _reference_buckets(qk: onp.ndarray, rotation: onp.ndarray, valid: onp.ndarray) -> list[int]:
    """Bucket of every position for one head and round; invalid positions get n_buckets."""
    n_buckets = 2 * rotation.shape[1]
    buckets = []
    for i in range(qk.shape[0]):
        projected = qk[i] @ rotation
        both = list(projected) + list(-projected)
        buckets.append(int(onp.argmax(both)) if valid[i] else n_buckets)
    return buckets


def _reference_round(qk: onp.ndarray, keys: onp.ndarray, v: onp.ndarray, buckets: list[int],
                     valid: onp.ndarray, causal: bool, chunk_len: int, before: int,
                     after: int) -> tuple[onp.ndarray, onp.ndarray]:
    """Per-query output [L, d_v] and log-sum-exp [L] of one head and round."""
    length = qk.shape[0]
    n_chunks = length // chunk_len
    order = sorted(range(length), key=lambda i: (buckets[i], i))
    out, lse = onp.zeros((length, v.shape[1])), onp.zeros(length)
    for rank, i in enumerate(order):
        chunk = rank // chunk_len
        window = [order[((chunk + offset) % n_chunks) * chunk_len + t]
                  for offset in range(-before, after + 1) for t in range(chunk_len)]
        scores = []
        for j in window:
            if not valid[j] or (causal and j > i):
                scores.append(-1e9)
            elif j == i:
                scores.append(-1e5)
            else:
                scores.append(float(qk[i] @ keys[j]))
        scores = onp.array(scores)
        top = scores.max()
        lse[i] = top + math.log(onp.exp(scores - top).sum())
        probs = onp.exp(scores - lse[i])
        out[i] = sum(p * v[j] for p, j in zip(probs, window))
    return out, lse


def lsh_attention_reference(x: Any, weights: tuple, rotations: Any, mask: Any = None, *,
                            causal: bool, chunk_len: int, n_chunks_before: int = 1,
                            n_chunks_after: int = 0) -> onp.ndarray:
    """LSH self-attention of x [B, L, d] by plain loops (float64); returns y [B, L, d].

    weights: (W_qk [H, d, d_qk], W_v [H, d, d_v], W_o [H, d_v, d]); rotations
    [H, d_qk, n_hashes, n_buckets/2] (see trax_sparse/layers/lsh/hashing.py); mask
    [B, L] (nonzero = real token) or None. L is padded to a multiple of
    chunk_len with masked-out positions. No dropout.
    """
    x = onp.asarray(x, onp.float64)
    w_qk, w_v, w_o = (onp.asarray(w, onp.float64) for w in weights)
    rotations = onp.asarray(rotations, onp.float64)
    batch, length, d = x.shape
    n_heads, n_rounds = w_qk.shape[0], rotations.shape[2]
    padded = -(-length // chunk_len) * chunk_len
    n_chunks = padded // chunk_len
    before = min(n_chunks_before, n_chunks - 1)
    after = min(n_chunks_after, n_chunks - 1 - before)
    valid = onp.zeros((batch, padded), bool)
    valid[:, :length] = True if mask is None else onp.asarray(mask) != 0
    x_pad = onp.zeros((batch, padded, d))
    x_pad[:, :length] = x
    y = onp.zeros((batch, padded, d))
    for b in range(batch):
        for h in range(n_heads):
            qk = x_pad[b] @ w_qk[h]                                     # [Lp, d_qk]
            v = x_pad[b] @ w_v[h]                                       # [Lp, d_v]
            keys = onp.stack([q / math.sqrt(q @ q + qk.shape[1] * 1e-6) for q in qk])
            outs, lses = [], []
            for r in range(n_rounds):
                buckets = _reference_buckets(qk, rotations[h, :, r, :], valid[b])
                out, lse = _reference_round(qk, keys, v, buckets, valid[b], causal, chunk_len,
                                            before, after)
                outs.append(out)
                lses.append(lse)
            lses = onp.stack(lses)                                      # [R, Lp]
            round_weights = onp.exp(lses - lses.max(axis=0))
            round_weights /= round_weights.sum(axis=0)
            o = sum(w[:, None] * out for w, out in zip(round_weights, outs))  # [Lp, d_v]
            y[b] += o @ w_o[h]
    return y[:, :length]


__all__ = ['lsh_attention_reference']
