"""The dense Transformer models: TransformerLM (decoder only) and Transformer (encoder-decoder).

Both take pluggable parts (attention, feed-forward, output layer); the
Scaling Transformer (scaling.py) is these models with sparse parts.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes
    >>> from trax_sparse.models import TransformerLM
    >>> lm = TransformerLM(vocab_size=32, d_model=16, d_ff=32, n_layers=1, n_heads=2, mode='eval')
    >>> lm.output_signature(shapes.ShapeDtype((2, 5), np.int32)).shape
    (2, 5, 32)
"""
from typing import Callable

from trax_sparse import layers as tl
from trax_sparse.models import blocks, parts
from trax_sparse.models.options import check_part_or_flags
from trax_sparse.models.parts import Part
from trax_sparse.precision import check_compute_dtype


def _check_model_mode(mode: str, name: str) -> str:
    return tl.check_mode(mode, name)


def TransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # noqa: N802
                  n_layers: int = 6, n_heads: int = 8, dropout: float = 0.1, max_len: int = 2048,
                  ff_activation: Callable[[], tl.Layer] = tl.Relu, attention: Part | None = None,
                  ff: Part | None = None, output: Part | None = None,
                  compute_dtype: str = 'float32', mode: str = 'train') -> tl.Layer:
    """Decoder-only pre-LN Transformer: token ids [B, L] -> logits [B, L, vocab_size].

    The model shifts its input right itself (identity in predict mode), so for
    language modelling inputs == targets. attention / ff / output are parts
    (mode -> layer); they default to dense CausalAttention, a dense FF and Dense.
    compute_dtype ('float32', 'bfloat16', 'float16'): the dtype of the activations and
    logits; weights stay float32 (docs/precision.md).
    """
    _check_model_mode(mode, 'TransformerLM')
    compute_dtype = check_compute_dtype('TransformerLM', compute_dtype)
    check_part_or_flags('TransformerLM', 'ff', ff, d_ff=(d_ff, 2048),
                        ff_activation=(ff_activation, tl.Relu))
    attention = attention or parts.attention('dense', d_model, n_heads, dropout=dropout,
                                             max_len=max_len)
    ff = ff or parts.feed_forward(d_model, d_ff, dropout=dropout, activation=ff_activation)
    output = output or parts.output_layer(vocab_size)
    return tl.Serial(                                                   # tokens [B, L]
        tl.ShiftRight(mode=mode),
        blocks.embedding_stack(vocab_size, d_model, dropout, max_len, mode,
                               compute_dtype),                          # [B, L, d]
        [blocks.DecoderBlock(attention, ff, dropout, mode) for _ in range(n_layers)],
        tl.LayerNorm(),
        output(mode),                                                   # logits [B, L, V]
        name='TransformerLM')


def Transformer(input_vocab_size: int, output_vocab_size: int | None = None,  # noqa: N802
                d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                n_decoder_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
                max_len: int = 2048, ff_activation: Callable[[], tl.Layer] = tl.Relu,
                attention: Part | None = None, ff: Part | None = None,
                encoder_attention: Part | None = None, encoder_ff: Part | None = None,
                output: Part | None = None, compute_dtype: str = 'float32',
                mode: str = 'train') -> tl.Layer:
    """Encoder-decoder with cross-attention: (inputs [B, Le], targets [B, Ld]) -> (logits, targets).

    Input id 0 is padding (masked in the encoder). The targets pass through
    so that a loss layer below sees (logits, targets, weights) on the stack. In
    predict mode the encoder runs once (cached) and the decoder gets one (or a
    few) target tokens per call together with the same inputs. attention / ff are the
    decoder's parts; encoder_attention (over (x, mask)) and encoder_ff the encoder's
    (default: dense bidirectional attention, the decoder's ff). compute_dtype: as in
    TransformerLM.
    """
    _check_model_mode(mode, 'Transformer')
    compute_dtype = check_compute_dtype('Transformer', compute_dtype)
    if encoder_ff is None:               # d_ff and ff_activation build the encoder's FF too
        check_part_or_flags('Transformer', 'ff', ff, d_ff=(d_ff, 2048),
                            ff_activation=(ff_activation, tl.Relu))
    output_vocab_size = output_vocab_size or input_vocab_size
    encoder_mode = 'eval' if mode == 'predict' else mode
    attention = attention or parts.attention('dense', d_model, n_heads, dropout=dropout,
                                             max_len=max_len)
    ff = ff or parts.feed_forward(d_model, d_ff, dropout=dropout, activation=ff_activation)
    encoder_attention = encoder_attention or parts.attention(
        'dense', d_model, n_heads, causal=False, masked=True, dropout=dropout)
    encoder_ff = encoder_ff or ff
    output = output or parts.output_layer(output_vocab_size)
    encoder = tl.Serial(                                                # tokens_e, mask
        blocks.embedding_stack(input_vocab_size, d_model, dropout, max_len, encoder_mode,
                               compute_dtype),
        [blocks.EncoderBlock(encoder_attention, encoder_ff, dropout, encoder_mode)
         for _ in range(n_encoder_layers)],
        tl.LayerNorm(),                                                 # enc [B, Le, d], mask
        name='Encoder')
    return tl.Serial(                                                   # tok_e, tok_d
        blocks.EncoderDecoderFront(encoder, output_vocab_size, d_model, dropout, max_len, mode,
                                   compute_dtype=compute_dtype),
        [blocks.EncoderDecoderBlock(d_model, n_heads, attention, ff, dropout, mode)
         for _ in range(n_decoder_layers)],                             # x, enc, mask, tok_d
        tl.Select([0, 3], n_in=4),                                      # x, tok_d
        tl.LayerNorm(),
        output(mode),                                                   # logits, tok_d
        name='Transformer')
