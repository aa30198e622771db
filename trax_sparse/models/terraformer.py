"""The Terraformer (docs/architecture.md): a reversible sparse encoder-decoder, no cross-attention.

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
and primes the decoder caches with the joint prefix; later calls take empty
inputs [B, 0] and one target token each (docs/predict_mode.md), or the same
inputs again as Trax passes them: the predict model is wrapped in
`EncoderInputsOnce`, which gives the model empty inputs after its first call,
so both forms give the same logits, eagerly and under jit.

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
import inspect
from typing import Any, Callable

import numpy as onp

from trax_sparse import fastmath
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.models import blocks, parts
from trax_sparse.models import reversible_blocks as rb
from trax_sparse.models.options import check_kind, check_part_or_flags
from trax_sparse.models.parts import Part
from trax_sparse.precision import check_compute_dtype
from trax_sparse.models.predict_inputs import EncoderInputsOnce


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
    padding in front. In predict mode the first call brings the encoder
    output; later calls bring an empty one (Le = 0: see `SkipWhenEmpty`;
    `EncoderInputsOnce` makes sure of it) and return (x_d, all-True mask).
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, mode: str = 'train'):
        super().__init__(n_in=3, n_out=2, name='ConcatenateWithPadding')
        self._mode = tl.check_mode(mode, self.name)

    def forward(self, inputs: Any) -> Any:
        x_d, enc, mask = inputs
        if fastmath.is_concrete(mask):
            real = onp.asarray(mask) != 0
            if onp.any(real[:, 1:] & ~real[:, :-1]):
                raise ValueError(f'{self.name}: encoder padding (id 0) must come after the real '
                                 f'tokens of each row')
        decoder_mask = xnp.ones(x_d.shape[:2], xnp.bool_)
        if self._mode == 'predict' and enc.shape[1] == 0:
            return x_d, decoder_mask
        aligned, aligned_mask = right_align(enc, mask)
        joint = xnp.concatenate([aligned, x_d.astype(aligned.dtype)], axis=1)   # [B, Le+Ld, d]
        return joint, xnp.concatenate([aligned_mask, decoder_mask], axis=1)     # [B, Le+Ld]


class SkipWhenEmpty(tl.Layer):
    """Runs `layer` (tokens, mask) -> (enc, mask) unless the tokens are empty [B, 0].

    An empty call returns an empty encoder output [B, 0, d] and mask [B, 0]
    without running the layer: the Terraformer's later predict calls, whose
    encoder part already sits in the decoder caches. Static (a shape), so
    both kinds of call run under jit. Weight-transparent, like `tl.Cache`.
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, layer: tl.Layer):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name='SkipWhenEmpty',
                         sublayers=[layer])

    def init_weights_and_state(self, input_signature: Any) -> None:
        layer = self.sublayers[0]
        with self.sublayer_context(0):
            w, s = layer.init(input_signature, self.rng)
            enc_sig = layer.abstract_forward(input_signature, w, s, self.rng)[0]
        self._d_enc, self._enc_dtype = enc_sig.shape[-1], enc_sig.dtype
        self.weights, self.state = w, s

    @property
    def shares_child_weights(self) -> bool:
        return True

    def sublayer_states(self, state: Any) -> tuple:
        return (state,)                 # its state is the layer's own, not (layer's, ...)

    def bytes_read_per_step(self, weights: Any) -> int:
        return 0                        # a decoding step after the first skips the encoder

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        return 0

    def forward(self, inputs: Any) -> Any:
        tokens, mask = inputs
        if tl.is_empty_call(inputs, self.n_in):
            empty = xnp.zeros((tokens.shape[0], 0, self._d_enc), self._enc_dtype)
            return empty, mask
        with self.sublayer_context(0):
            out, self.state = self.sublayers[0].pure_fn(inputs, self.weights, self.state,
                                                        self.rng)
        return out


def StripEncoderPart() -> tl.Layer:  # noqa: N802
    """(x [B, L, d], tokens_d [B, Ld]) -> (x[:, -Ld:], tokens_d): the decoder positions."""
    return tl.Fn('StripEncoderPart', lambda x, tokens: (x[:, x.shape[1] - tokens.shape[1]:],
                                                        tokens), n_out=2)


def _encoder(vocab_size: int, d_model: int, n_layers: int, attention: Part, ff: Part,
             dropout: float, max_len: int, ff_takes_mask: bool, mode: str,
             compute_dtype: str) -> tl.Layer:
    """(tokens_e [B, Le], mask) -> (enc [B, Le, d], mask): reversible blocks, streams averaged."""
    mode = 'eval' if mode == 'predict' else mode                   # runs once, on the inputs
    return tl.Serial(                                                   # tokens_e, mask
        blocks.embedding_stack(vocab_size, d_model, dropout, max_len, mode, compute_dtype),
        tl.Dup(),                                                       # x1, x2, mask
        tl.ReversibleSerial([rb.ReversibleBlock([attention], ff, dropout, mode, masked=True,
                                                ff_takes_mask=ff_takes_mask)
                             for _ in range(n_layers)]),
        tl.Fn('AverageStreams', lambda a, b: (a + b) * 0.5),           # enc, mask
        tl.LayerNorm(),
        name='Encoder')


def _check_parts_or_flags(args: dict) -> None:
    """mode, kind strings and compute_dtype are checked (errors name their parameter); a part
    and a flag that builds it: an error."""
    tl.check_mode(args['mode'], 'Terraformer')
    check_compute_dtype('Terraformer', args['compute_dtype'])
    check_kind('Terraformer', 'encoder_attention_type', args['encoder_attention_type'],
               ('dense', 'lsh'))
    check_kind('Terraformer', 'decoder_attention_type', args['decoder_attention_type'],
               parts.ATTENTION_KINDS)
    defaults = {name: p.default for name, p in
                inspect.signature(Terraformer).parameters.items()}

    def flags(*names: str) -> dict:
        return {name: (args[name], defaults[name]) for name in names}

    check_part_or_flags('Terraformer', 'encoder_attention', args['encoder_attention'],
                        **flags('encoder_attention_type', 'encoder_n_chunks_after'))
    check_part_or_flags('Terraformer', 'decoder_attention', args['decoder_attention'],
                        **flags('decoder_attention_type', 'qkv_sparsity', 'length_kernel_size'))
    if args['encoder_attention'] is not None and args['decoder_attention'] is not None:
        check_part_or_flags('Terraformer', 'encoder_attention and decoder_attention',
                            args['decoder_attention'], **flags(
                                'd_attention_key', 'd_attention_value', 'chunk_len', 'n_hashes',
                                'n_buckets', 'n_chunks_before', 'attention_dropout'))
    if args['encoder_ff'] is None:       # the flags build the encoder's FF too
        check_part_or_flags('Terraformer', 'ff', args['ff'],
                            **flags('d_ff', 'ff_sparsity', 'ff_activation'))
    check_part_or_flags('Terraformer', 'output', args['output'], **flags('loss_sparsity'))


def Terraformer(input_vocab_size: int, output_vocab_size: int | None = None,  # noqa: N802
                d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                n_decoder_layers: int = 6, n_heads: int = 8, d_attention_key: int = 64,
                d_attention_value: int = 64, encoder_attention_type: str = 'dense',
                decoder_attention_type: str = 'dense', n_decoder_attention_layers: int = 2,
                ff_sparsity: parts.FFSparsity = 0, qkv_sparsity: int | None = None,
                length_kernel_size: int = 3, loss_sparsity: int = 0, chunk_len: int = 64,
                n_hashes: int = 1, n_buckets: int | list | None = 64, n_chunks_before: int = 1,
                encoder_n_chunks_after: int = 1, attention_dropout: float = 0.0,
                dropout: float = 0.1, max_len: int = 2048,
                ff_activation: Callable[[], tl.Layer] = tl.Relu, ff_use_sru: Any = 0,
                encoder_attention: Part | None = None, decoder_attention: Part | None = None,
                ff: Part | None = None, encoder_ff: Part | None = None, output: Part | None = None,
                compute_dtype: str = 'float32', mode: str = 'train') -> tl.Layer:
    """(inputs [B, Le], targets [B, Ld]) -> (logits [B, Ld, V], targets). Input id 0 is padding.

    Parts (mode -> layer) as in TransformerLM: encoder_attention (bidirectional) and
    decoder_attention (causal, over the joint sequence) map (x, mask) -> (y, mask); ff,
    encoder_ff (default ff), output. Missing ones are built from the flags (attention types:
    encoder 'dense' | 'lsh', decoder 'dense' | 'sparse_qkv' | 'lsh'). max_len bounds Le + Ld.
    ff_use_sru: k or (k, n_units) puts k SRU layers of n_units (default 32) beside every
    feed-forward, given ones too (the paper's C4 Terraformer: (1, 32)); 0 = none. compute_dtype:
    the activations' dtype, as in TransformerLM (docs/precision.md).
    """
    _check_parts_or_flags(locals())
    output_vocab_size = output_vocab_size or input_vocab_size
    lsh = dict(chunk_len=chunk_len, n_hashes=n_hashes, n_buckets=n_buckets,
               n_chunks_before=n_chunks_before, attention_dropout=attention_dropout)
    common = dict(masked=True, dropout=dropout, max_len=max_len,
                  d_attention_key=d_attention_key, d_attention_value=d_attention_value)
    encoder_attention = encoder_attention or parts.attention(
        encoder_attention_type, d_model, n_heads, causal=False,
        lsh=dict(lsh, n_chunks_after=encoder_n_chunks_after), **common)
    decoder_attention = decoder_attention or parts.attention(
        decoder_attention_type, d_model, n_heads, qkv_sparsity=qkv_sparsity,
        length_kernel_size=length_kernel_size, lsh=dict(lsh, n_chunks_after=0), **common)
    ff = ff or parts.feed_forward(d_model, d_ff, ff_sparsity, dropout, ff_activation)
    encoder_ff = encoder_ff or ff
    if ff_use_sru:
        ff, encoder_ff = (parts.feed_forward_with_sru(f, d_model, ff_use_sru)
                          for f in (ff, encoder_ff))
    output = output or parts.output_layer(output_vocab_size, loss_sparsity)
    encoder = _encoder(input_vocab_size, d_model, n_encoder_layers, encoder_attention,
                       encoder_ff, dropout, max_len, bool(ff_use_sru), mode, compute_dtype)
    model = tl.Serial(                                                  # tok_e, tok_d
        blocks.EncoderDecoderFront(encoder, output_vocab_size, d_model, dropout, max_len, mode,
                                   predict_encoder=SkipWhenEmpty, compute_dtype=compute_dtype),
        ConcatenateWithPadding(mode),                                   # joint, jmask, tok_d
        tl.Select([0, 0, 1]),                                           # x1, x2, jmask, tok_d
        tl.ReversibleSerial([rb.ReversibleBlock(
            [decoder_attention] * n_decoder_attention_layers, ff, dropout, mode, masked=True,
            ff_takes_mask=bool(ff_use_sru)) for _ in range(n_decoder_layers)]),
        tl.Concatenate(),                                               # x [B, L, 2d], jmask, tok_d
        tl.Select([0, 2], n_in=3),                                      # x, tok_d
        StripEncoderPart(),                                             # x [B, Ld, 2d], tok_d
        tl.LayerNorm(),
        tl.Dropout(dropout, mode=mode),
        output(mode),                                                   # logits, tok_d
        name='Terraformer')
    return EncoderInputsOnce(model) if mode == 'predict' else model
