"""The Terraformer (DESIGN.md §5.3): reversible sparse encoder-decoder without cross-attention.

The encoder output (its real tokens, padding dropped) is put in front of the
decoder embeddings; the decoder runs causal self-attention over this joint
sequence and its decoder part is kept at the end:

    tokens_e ─ Embed ─ Dup ─ ReversibleSerial(encoder blocks) ─ avg ─ LN ─┐
    tokens_d ─ ShiftRight ─ Embed ──────────── ConcatenateWithPadding ────┴─ Dup ─
      ReversibleSerial(decoder blocks: 2 attentions + FF) ─ Concatenate ─ strip ─ LN ─ logits

Layout of the joint sequence, per row: [padding; real encoder tokens; decoder
tokens] (padding in FRONT, masked). So every row's decoder tokens sit at the
same positions, and predict mode decodes any batch size with one cache
position (Trax put the padding between encoder and decoder and, in predict,
patched classes to skip it, for batch 1 only). The decoder attention layers
take a key mask, and sparse QKV zeroes its inputs at padded positions, so the
output does not depend on how much padding an input has.

Predict mode: the first call (inputs, first target tokens) encodes the inputs
and primes the decoder caches with the joint prefix; later calls feed one
target token (the inputs are then ignored). The first call must see a
concrete state (the decoding functions run it without jit); a jit-compiled
first call would produce NaN instead of silently wrong logits.

Example:
    >>> import numpy as np
    >>> from trax_sparse import shapes
    >>> from trax_sparse.models import Terraformer
    >>> model = Terraformer(16, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1,
    ...                     n_heads=2, mode='eval')
    >>> sig = (shapes.ShapeDtype((2, 6), np.int32), shapes.ShapeDtype((2, 4), np.int32))
    >>> [s.shape for s in model.output_signature(sig)]
    [(2, 4, 16), (2, 4)]
"""
from typing import Any, Callable

import numpy as onp

from trax_sparse import fastmath
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.models import blocks
from trax_sparse.models import reversible_blocks as rb


def right_align(enc: Any, mask: Any) -> tuple[Any, Any]:
    """Moves each row's real tokens (a prefix, mask True) to the end; zeros before them.

    enc [B, Le, d], mask [B, Le] -> (aligned [B, Le, d], aligned mask [B, Le]).
    """
    length = enc.shape[1]
    n_real = xnp.sum((mask != 0).astype(xnp.int32), axis=1)                # [B]
    source = xnp.arange(length)[None, :] - (length - n_real)[:, None]       # [B, Le]
    valid = source >= 0
    gathered = xnp.take_along_axis(enc, xnp.clip(source, 0, length - 1)[..., None], axis=1)
    return xnp.where(valid[..., None], gathered, xnp.zeros_like(gathered)), valid


class ConcatenateWithPadding(tl.Layer):
    """(x_d [B, Ld, d], enc [B, Le, d], mask_e [B, Le]) -> (joint [B, Le+Ld, d], mask).

    joint = [right-aligned real encoder tokens; x_d], mask False at the
    padding in front. In predict mode only the first call concatenates; later
    calls return (x_d, all-True mask).
    """

    def __init__(self, mode: str = 'train'):
        super().__init__(n_in=3, n_out=2, name='ConcatenateWithPadding')
        self._mode = tl.check_mode(mode, self.name)

    def init_weights_and_state(self, input_signature: Any) -> None:
        self.weights = ()
        self.state = xnp.zeros((), xnp.int32) if self._mode == 'predict' else ()

    def forward(self, inputs: Any) -> Any:
        x_d, enc, mask = inputs
        if fastmath.is_concrete(mask):
            real = onp.asarray(mask) != 0
            if onp.any(real[:, 1:] & ~real[:, :-1]):
                raise ValueError(f'{self.name}: encoder padding (id 0) must come after the real '
                                 f'tokens of each row')
        decoder_mask = xnp.ones(x_d.shape[:2], xnp.bool_)
        if self._mode == 'predict':
            started = self.state
            self.state = xnp.ones((), xnp.int32)
            if not fastmath.is_concrete(started):      # jit-compiled step: a later call
                poisoned = xnp.where(started > 0, x_d, xnp.full_like(x_d, xnp.nan))
                return poisoned, decoder_mask
            if int(started):
                return x_d, decoder_mask
        aligned, aligned_mask = right_align(enc, mask)
        return (xnp.concatenate([aligned, x_d.astype(aligned.dtype)], axis=1),   # [B, Le+Ld, d]
                xnp.concatenate([aligned_mask, decoder_mask], axis=1))           # [B, Le+Ld]


def StripEncoderPart() -> tl.Layer:  # noqa: N802
    """(x [B, L, d], tokens_d [B, Ld]) -> (x[:, -Ld:], tokens_d): the decoder positions."""
    return tl.Fn('StripEncoderPart', lambda x, tokens: (x[:, x.shape[1] - tokens.shape[1]:],
                                                        tokens), n_out=2)


def Terraformer(input_vocab_size: int, output_vocab_size: int | None = None,  # noqa: N802
                d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                n_decoder_layers: int = 6, n_heads: int = 8, d_attention_key: int = 64,
                d_attention_value: int = 64, encoder_attention_type: str = 'dense',
                decoder_attention_type: str = 'dense', n_decoder_attention_layers: int = 2,
                ff_sparsity: Any = 0, qkv_sparsity: int | None = None,
                length_kernel_size: int = 3, loss_sparsity: int = 0, chunk_len: int = 64,
                n_hashes: int = 1, n_buckets: int = 64, n_chunks_before: int = 1,
                encoder_n_chunks_after: int = 1, attention_dropout: float = 0.0,
                dropout: float = 0.1, max_len: int = 2048,
                ff_activation: Callable[[], tl.Layer] = tl.Relu,
                mode: str = 'train') -> tl.Layer:
    """(inputs [B, Le], targets [B, Ld]) -> (logits [B, Ld, V], targets). Input id 0 is padding.

    encoder_attention_type: 'dense' or 'lsh' (bidirectional); decoder_attention_type:
    'dense', 'sparse_qkv' or 'lsh' (causal over the joint sequence). max_len bounds the
    joint length Le + Ld (decoder caches in predict mode).
    """
    tl.check_mode(mode, 'Terraformer')
    output_vocab_size = output_vocab_size or input_vocab_size
    encoder_mode = 'eval' if mode == 'predict' else mode
    lsh = dict(chunk_len=chunk_len, n_hashes=n_hashes, n_buckets=n_buckets,
               n_chunks_before=n_chunks_before, attention_dropout=attention_dropout)
    encoder_attention = rb.bidirectional_attention(
        d_model, n_heads, dropout, encoder_attention_type,
        dict(lsh, n_chunks_after=encoder_n_chunks_after), d_attention_key, d_attention_value,
        max_len)
    decoder_attention = rb.masked_causal_attention(
        d_model, n_heads, dropout, max_len, decoder_attention_type, qkv_sparsity,
        length_kernel_size, dict(lsh, n_chunks_after=0), d_attention_key, d_attention_value)
    ff = blocks.feed_forward(d_model, d_ff, ff_sparsity, dropout, ff_activation)
    average = tl.Fn('AverageStreams', lambda a, b: (a + b) * 0.5)
    encoder = tl.Serial(                                                # tokens_e, mask
        blocks.embedding_stack(input_vocab_size, d_model, dropout, max_len, encoder_mode),
        tl.Dup(),                                                       # x1, x2, mask
        tl.ReversibleSerial([rb.ReversibleDecoderBlock([encoder_attention], ff, dropout,
                                                       encoder_mode, masked=True)
                             for _ in range(n_encoder_layers)]),
        average,                                                        # enc, mask
        tl.LayerNorm(),
        name='Encoder')
    return tl.Serial(                                                   # tok_e, tok_d
        blocks.EncoderDecoderFront(encoder, output_vocab_size, d_model, dropout, max_len, mode),
        ConcatenateWithPadding(mode),                                   # joint, jmask, tok_d
        tl.Select([0, 0, 1]),                                           # x1, x2, jmask, tok_d
        tl.ReversibleSerial([rb.ReversibleDecoderBlock(
            [decoder_attention] * n_decoder_attention_layers, ff, dropout, mode, masked=True)
            for _ in range(n_decoder_layers)]),
        tl.Concatenate(),                                               # x [B, L, 2d], jmask, tok_d
        tl.Select([0, 2], n_in=3),                                      # x, tok_d
        StripEncoderPart(),                                             # x [B, Ld, 2d], tok_d
        tl.LayerNorm(),
        tl.Dropout(dropout, mode=mode),
        blocks.output_layer(output_vocab_size, loss_sparsity)(mode),    # logits, tok_d
        name='Terraformer')
