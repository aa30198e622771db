"""Reversible (RevNet) blocks, built from parts, of the Reformer and the Terraformer.

A reversible block maps two streams (x1, x2) to (y1, y2):
    y1 = x1 + F(x2),  y2 = x2 + G(y1)
as [ReversibleHalfResidual(F), ReversibleSwap(), ReversibleHalfResidual(G),
ReversibleSwap()], so its backward recomputes instead of storing activations.
Masked parts take (x, mask) and keep the mask below the streams on the stack.

Example:
    >>> from trax_sparse import layers as tl
    >>> from trax_sparse.models import reversible_blocks as rb
    >>> block = rb.ReversibleBlock([lambda m: tl.Dense(8)], lambda m: tl.Dense(8),
    ...                            dropout=0.0, mode='eval')
    >>> [layer.name for layer in block]
    ['ReversibleHalfResidual', 'ReversibleSwap', 'ReversibleHalfResidual', 'ReversibleSwap']
"""
from typing import Any

from trax_sparse import layers as tl
from trax_sparse.models.parts import Part


def _half_residual(part_layers: Any, dropout: float, mode: str, masked: bool) -> tl.Layer:
    if masked:
        # context (x2, mask): LN on x2, attention (x, mask) -> (y, mask), drop the mask copy.
        return tl.ReversibleHalfResidual(tl.LayerNorm(), part_layers, tl.Select([0], n_in=2),
                                         tl.Dropout(dropout, mode=mode))
    return tl.ReversibleHalfResidual(tl.LayerNorm(), part_layers, tl.Dropout(dropout, mode=mode))


def ReversibleBlock(attentions: list, ff: Part, dropout: float, mode: str,  # noqa: N802
                    masked: bool = False, ff_takes_mask: bool = False) -> list:
    """One or more attention half-residuals, then the FF one, each followed by a swap.

    An encoder block (bidirectional attention) or a decoder block (causal), as the
    attention parts say. Streams (x1, x2) (and, when masked, a mask item below them).
    ff_takes_mask: the FF part maps (x, mask) -> (y, mask), like the attention parts
    (e.g. `parts.feed_forward_with_sru`); needs masked=True.
    """
    if ff_takes_mask and not masked:
        raise ValueError('ReversibleBlock: an FF part that takes the mask needs '
                         'masked=True')
    layers = []
    for attention in attentions:
        layers += [_half_residual(attention(mode), dropout, mode, masked), tl.ReversibleSwap()]
    if ff_takes_mask:
        layers += [_half_residual(ff(mode), dropout, mode, masked=True), tl.ReversibleSwap()]
    else:
        layers += [tl.ReversibleHalfResidual(tl.LayerNorm(), ff(mode),
                                             tl.Dropout(dropout, mode=mode)),
                   tl.ReversibleSwap()]
    return layers
