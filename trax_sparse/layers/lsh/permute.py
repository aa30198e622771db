"""Sorting and unsorting LSH rounds by permutation gathers with gather gradients.

LSH attention sorts every hash round's positions by bucket and unsorts the
outputs afterwards. Written as `take_along_axis`, JAX differentiates each
gather into a scatter-add into a zero buffer, one per gather and layer, and
XLA:CPU allocated all of them (copies of one broadcast zero, so that each
scatter can write in place) at the start of a training step and kept them
until that layer's backward: ~18 buffers of [B, H, R, L, d] alive at once in
a 6+6 Terraformer (docs/RESULTS.md, section 2). A permutation's cotangent is
the cotangent gathered by the inverse permutation: `fastmath.take_permutation`.

Example:
    >>> import numpy as np
    >>> x = np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2)      # [B, H, L, d]
    >>> perm = np.array([[[[2, 0, 1]]]])                             # [B, H, R=1, L]
    >>> gather_rounds(x, perm, inverse_permutation(perm))[0, 0, 0].tolist()
    [[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]
"""
from typing import Any

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp


def inverse_permutation(perm: Any) -> Any:
    """The inverse of permutations along the last axis: inv[..., perm[..., i]] = i."""
    positions = xnp.broadcast_to(xnp.arange(perm.shape[-1], dtype=xnp.int32), perm.shape)
    _, inverse = fastmath.sort_key_val(perm, positions, -1)
    return inverse


def gather_rounds(x: Any, perm: Any, inverse: Any) -> Any:
    """x [B, H, L, ...] at each round's positions perm [B, H, R, L] -> [B, H, R, L, ...].

    `inverse` = inverse_permutation(perm); each perm[b, h, r] must be a permutation
    of 0..L-1. The gradient w.r.t. x gathers the cotangent by `inverse` and sums the
    rounds.
    """
    return fastmath.take_permutation(x[:, :, None], perm, inverse, axis=3)


def permute(x: Any, perm: Any, inverse: Any) -> Any:
    """x [B, H, R, L, ...] permuted along axis 3 by perm [B, H, R, L]: x[..., perm[i], ...].

    `inverse` = inverse_permutation(perm); the gradient gathers the cotangent by it.
    """
    return fastmath.take_permutation(x, perm, inverse, axis=3)


__all__ = ['gather_rounds', 'inverse_permutation', 'permute']
