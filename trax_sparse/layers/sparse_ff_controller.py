"""SparseFF's controller: which unit of each block of N a token uses.

A low-rank product gives each token logits over the N units of every block; training
draws a choice per block from their softmax (Gumbel-max, `gumbel_choices`), eval and
predict take the argmax, and `balance_loss` measures how unevenly the units are chosen.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> from trax_sparse.layers import sparse_ff_controller as controller
    >>> logits = np.log(np.array([[[0.7, 0.1, 0.1, 0.1]]], np.float32))   # 1 token, 1 block
    >>> with fastmath.use_backend('numpy'):
    ...     round(float(controller.balance_loss(logits)), 4)   # N · Σ f·P = 4 · 1 · 0.7
    2.8
"""
from typing import Any

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_all_like, float32_stats


def controller_logits(x: Any, controller: tuple, n_blocks: int, block_size: int) -> Any:
    """Low-rank logits (x W_c1) W_c2 + b_c, as [..., d_ff/N, N]: two plain matmuls in x's
    dtype; the logits in float32 (or wider), for the softmax and the choice."""
    w_c1, w_c2, b_c = cast_all_like(controller, x)      # [d, r], [r, d_ff], [d_ff]
    low = xnp.matmul(x, w_c1)                           # [..., r]
    logits = xnp.matmul(low, w_c2) + b_c                # [..., d_ff]
    return float32_stats(logits.reshape(x.shape[:-1] + (n_blocks, block_size)))


def one_hot(choices: Any, block_size: int, dtype: Any) -> Any:
    """choices [..., n_blocks] (int) -> exactly one-hot masks [..., n_blocks, N]."""
    return (choices[..., None] == xnp.arange(block_size)).astype(dtype)


def gumbel_choices(logits: Any, temperature: float, rng: Any) -> Any:
    """A draw of argmax(log p + τ·g) per block, g ~ Gumbel: logits [..., nb, N] -> [..., nb].

    argmax(log p + τ·g) follows softmax(logits / τ), so this inverts that law's CDF
    with one uniform per block instead of N Gumbel draws (on XLA:CPU the [B, L, d_ff]
    Gumbel noise cost more than the FF block itself). The CDF is one matmul with an
    upper-triangular [N, N] matrix. τ = 0: the plain argmax.
    """
    if temperature == 0:
        return xnp.argmax(logits, axis=-1).astype(xnp.int32)
    block_size = logits.shape[-1]
    scaled = fastmath.stop_gradient(logits) / temperature
    q = softmax(scaled)                                                         # [..., nb, N]
    cdf = xnp.matmul(q, xnp.asarray(onp.triu(onp.ones((block_size, block_size), q.dtype))))
    u = fastmath.random.uniform(rng, logits.shape[:-1] + (1,), q.dtype) * cdf[..., -1:]
    below = (cdf < u).astype(xnp.int32)                                       # [..., nb, N]
    return xnp.minimum(xnp.sum(below, axis=-1), block_size - 1).astype(xnp.int32)


def softmax(logits: Any) -> Any:
    """The choice probabilities within each block: softmax over the last axis (N)."""
    return xnp.exp(logits - fastmath.logsumexp(logits, axis=-1, keepdims=True))


def balance_loss(logits: Any, probs: Any = None) -> Any:
    """N · Σ_j f_j · P_j, averaged over the blocks: logits [T, nb, N] -> float32 ();
    `probs`: their softmax when the caller has it already.

    f_j: the share of tokens whose argmax (the unit eval and predict choose) is unit j of
    the block; P_j: unit j's mean softmax probability. 1 when every unit is chosen
    equally often, N when one unit takes every token. Only P carries a gradient, so
    minimizing it moves probability towards the units chosen least (as the
    Switch Transformer's load-balancing loss does for experts).
    """
    block_size = logits.shape[-1]
    logits = float32_stats(logits)
    if probs is None:
        probs = softmax(logits)
    chosen = one_hot(xnp.argmax(logits, axis=-1), block_size, probs.dtype)   # [T, nb, N]
    share = fastmath.stop_gradient(xnp.mean(chosen, axis=0))                # [nb, N]
    return block_size * xnp.mean(xnp.sum(share * xnp.mean(probs, axis=0), axis=-1))


__all__ = ['balance_loss', 'controller_logits', 'gumbel_choices', 'one_hot', 'softmax']
