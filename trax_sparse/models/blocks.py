"""Transformer blocks built from parts (parts.py), shared by every non-reversible model.

A part is a factory `mode -> Layer`, so a model picks its attention,
feed-forward and output layer without flags inside the blocks: the Scaling
Transformer passes sparse parts to the very same blocks.

Example:
    >>> from trax_sparse.models import blocks, parts
    >>> block = blocks.DecoderBlock(parts.attention('dense', 16, 2), parts.feed_forward(16, 32),
    ...                             dropout=0.0, mode='eval')
    >>> [layer.name for layer in block]
    ['Residual', 'Residual']
"""
from typing import Callable

from trax_sparse import layers as tl
from trax_sparse.models.parts import Part


def DecoderBlock(attention: Part, ff: Part, dropout: float, mode: str) -> list:  # noqa: N802
    """Pre-LN block: x + Attn(LN x), then x + FF(LN x)."""
    return [                                                              # stack: x
        tl.Residual(tl.LayerNorm(), attention(mode), tl.Dropout(dropout, mode=mode)),
        tl.Residual(tl.LayerNorm(), ff(mode), tl.Dropout(dropout, mode=mode)),
    ]


def EncoderBlock(attention: Part, ff: Part, dropout: float, mode: str) -> list:  # noqa: N802
    """Pre-LN bidirectional block over (x, mask) -> (x, mask); the attention takes the mask."""
    return [                                                              # stack: x, mask
        tl.Residual(tl.LayerNorm(), attention(mode), tl.Dropout(dropout, mode=mode)),  # x, mask
        tl.Residual(tl.LayerNorm(), ff(mode), tl.Dropout(dropout, mode=mode)),
    ]


def EncoderDecoderBlock(d_model: int, n_heads: int, attention: Part, ff: Part,  # noqa: N802
                        dropout: float, mode: str) -> list:
    """Causal self-attention, cross-attention to the encoder, FF: (x, enc, mask) -> same."""
    return [                                                              # stack: x, enc, mask
        tl.Residual(tl.LayerNorm(), attention(mode), tl.Dropout(dropout, mode=mode)),
        tl.Select([0, 1, 2, 1, 2]),                                       # x, enc, mask, enc, mask
        tl.Residual(tl.LayerNorm(), tl.EncDecAttention(d_model, n_heads, dropout, mode=mode),
                    tl.Dropout(dropout, mode=mode)),                      # x, enc, mask
        tl.Residual(tl.LayerNorm(), ff(mode), tl.Dropout(dropout, mode=mode)),
    ]


def PaddingMask(pad_id: int = 0) -> tl.Layer:  # noqa: N802
    """Token ids [B, L] -> bool mask [B, L], True at real tokens."""
    return tl.Fn('PaddingMask', lambda tokens: tokens != pad_id)


def embedding_stack(vocab_size: int, d_model: int, dropout: float, max_len: int,
                    mode: str, compute_dtype: str = 'float32') -> list:
    """Token ids [B, L] -> Embedding -> Dropout -> PositionalEncoding -> [B, L, d].

    The model's activations start here, in `compute_dtype` (the precision policy:
    trax_sparse/precision.py).
    """
    return [tl.Embedding(vocab_size, d_model, compute_dtype=compute_dtype),
            tl.Dropout(dropout, mode=mode),
            tl.PositionalEncoding(max_len, mode=mode)]


def EncoderDecoderFront(encoder: tl.Layer, output_vocab_size: int, d_model: int,  # noqa: N802
                        dropout: float, max_len: int, mode: str,
                        predict_encoder: Callable[[tl.Layer], tl.Layer] = tl.Cache,
                        compute_dtype: str = 'float32') -> list:
    """(tokens_e, tokens_d) -> (x_d, enc, mask_e, tokens_d): encode, then embed the targets.

    `encoder` maps (tokens_e, mask_e) -> (enc, mask_e); in predict mode it is wrapped in
    `predict_encoder` (default tl.Cache: runs on the first call, whose encoder inputs are
    real; later calls pass empty inputs [B, 0] and get the stored output). x_d are the
    shifted, embedded targets; tokens_d pass through for the loss.
    """
    return [                                                            # tok_e, tok_d
        tl.Select([0, 0, 1, 1]),                                        # tok_e, tok_e, tok_d, tok_d
        tl.Parallel(None, PaddingMask()),                               # tok_e, mask, tok_d, tok_d
        predict_encoder(encoder) if mode == 'predict' else encoder,     # enc, mask, tok_d, tok_d
        tl.Select([2, 0, 1, 3]),                                        # tok_d, enc, mask, tok_d
        tl.ShiftRight(mode=mode),
        embedding_stack(output_vocab_size, d_model, dropout, max_len, mode, compute_dtype),
    ]                                                                   # x_d, enc, mask, tok_d
