"""Reversible (RevNet) blocks and the attention parts of the Reformer and the Terraformer.

A reversible block maps two streams (x1, x2) to (y1, y2):
    y1 = x1 + F(x2),  y2 = x2 + G(y1)
as [ReversibleHalfResidual(F), ReversibleSwap(), ReversibleHalfResidual(G),
ReversibleSwap()], so its backward recomputes instead of storing activations.
Masked parts take (x, mask) and keep the mask below the streams on the stack.

Example:
    >>> from trax_sparse import layers as tl
    >>> from trax_sparse.models import reversible_blocks as rb
    >>> block = rb.ReversibleDecoderBlock([lambda m: tl.Dense(8)], lambda m: tl.Dense(8),
    ...                                   dropout=0.0, mode='eval')
    >>> [layer.name for layer in block]
    ['ReversibleHalfResidual', 'ReversibleSwap', 'ReversibleHalfResidual', 'ReversibleSwap']
"""
from typing import Any

from trax_sparse import layers as tl
from trax_sparse.models.blocks import Part


def lsh_attention(n_heads: int, d_attention_key: int, d_attention_value: int, causal: bool,
                  masked: bool, dropout: float, lsh: dict, max_len: int) -> Part:
    """LSHSelfAttention part (it maps back to its input width itself); `lsh` holds chunk_len,
    n_hashes, n_buckets, n_chunks_before, ..."""
    return lambda mode: tl.LSHSelfAttention(
        n_heads=n_heads, d_qk=d_attention_key, d_v=d_attention_value, causal=causal,
        masked=masked, output_dropout=dropout, predict_mem_len=max_len, mode=mode, **lsh)


def masked_causal_attention(d_model: int, n_heads: int, dropout: float, max_len: int,
                            attention_type: str, qkv_sparsity: int | None,
                            length_kernel_size: int, lsh: dict,
                            d_attention_key: int, d_attention_value: int) -> Part:
    """Causal attention over (x, mask) -> (y, mask): 'dense', 'sparse_qkv' or 'lsh'."""
    if attention_type == 'dense':
        return lambda mode: tl.CausalAttention(d_model, n_heads, dropout, max_len, masked=True,
                                               mode=mode)
    if attention_type == 'sparse_qkv':
        return lambda mode: tl.MultiplicativeConvCausalAttention(
            d_model, n_heads, sparsity=qkv_sparsity, length_kernel_size=length_kernel_size,
            dropout=dropout, max_len=max_len, masked=True, mode=mode)
    if attention_type == 'lsh':
        return lsh_attention(n_heads, d_attention_key, d_attention_value, causal=True,
                             masked=True, dropout=dropout, lsh=lsh, max_len=max_len)
    raise ValueError(f"attention_type must be 'dense', 'sparse_qkv' or 'lsh', got "
                     f'{attention_type!r}')


def bidirectional_attention(d_model: int, n_heads: int, dropout: float, attention_type: str,
                            lsh: dict, d_attention_key: int, d_attention_value: int,
                            max_len: int) -> Part:
    """Encoder attention over (x, mask) -> (y, mask): 'dense' or 'lsh'."""
    if attention_type == 'dense':
        return lambda mode: tl.Attention(d_model, n_heads, dropout, mode=mode)
    if attention_type == 'lsh':
        return lsh_attention(n_heads, d_attention_key, d_attention_value, causal=False,
                             masked=True, dropout=dropout, lsh=lsh, max_len=max_len)
    raise ValueError(f"encoder attention_type must be 'dense' or 'lsh', got {attention_type!r}")


def _half_residual(part_layers: Any, dropout: float, mode: str, masked: bool) -> tl.Layer:
    if masked:
        # context (x2, mask): LN on x2, attention (x, mask) -> (y, mask), drop the mask copy.
        return tl.ReversibleHalfResidual(tl.LayerNorm(), part_layers, tl.Select([0], n_in=2),
                                         tl.Dropout(dropout, mode=mode))
    return tl.ReversibleHalfResidual(tl.LayerNorm(), part_layers, tl.Dropout(dropout, mode=mode))


def ReversibleDecoderBlock(attentions: list, ff: Part, dropout: float, mode: str,  # noqa: N802
                           masked: bool = False, ff_takes_mask: bool = False) -> list:
    """One or more attention half-residuals, then the FF one, each followed by a swap.

    Streams (x1, x2) (and, when masked, a mask item below them on the stack).
    ff_takes_mask: the FF part maps (x, mask) -> (y, mask), like the attention parts
    (e.g. `blocks.feed_forward_with_sru`); needs masked=True.
    """
    if ff_takes_mask and not masked:
        raise ValueError('ReversibleDecoderBlock: an FF part that takes the mask needs '
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
