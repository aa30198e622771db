"""Transformer blocks with pluggable parts, shared by every model.

A part is a factory `mode -> Layer`, so a model picks its attention,
feed-forward and output layer without flags inside the blocks: the Scaling
Transformer passes sparse parts to the very same blocks.

Example:
    >>> from trax_sparse.models import blocks
    >>> ff = blocks.dense_feed_forward(d_model=16, d_ff=32)
    >>> [layer.name for layer in ff('eval')]
    ['Dense_32', 'Relu', 'Dropout', 'Dense_16']
"""
from typing import Any, Callable

from trax_sparse import layers as tl

Part = Callable[[str], Any]   # mode -> Layer (or list of layers)


def dense_feed_forward(d_model: int, d_ff: int, dropout: float = 0.0,
                       activation: Callable[[], tl.Layer] = tl.Relu) -> Part:
    """x -> Dense(d_ff) -> activation -> Dropout -> Dense(d_model)."""
    return lambda mode: [tl.Dense(d_ff), activation(), tl.Dropout(dropout, mode=mode),
                         tl.Dense(d_model)]


def sparse_feed_forward(d_ff: int, ff_sparsity: Any, dropout: float = 0.0,
                        activation: Callable[[], tl.Layer] = tl.Relu) -> Part:
    """SparseFF from the paper's `ff_sparsity`: N, (N, d_lowrank) or (N, d_lowrank, τ, q)."""
    options = tuple(ff_sparsity) if isinstance(ff_sparsity, (tuple, list)) else (ff_sparsity,)
    if not 1 <= len(options) <= 4:
        raise ValueError(f'ff_sparsity must be N, (N, d_lowrank) or (N, d_lowrank, temperature, '
                         f'quant_prob); got {ff_sparsity!r}')
    n = int(options[0])
    d_lowrank = int(options[1]) if len(options) > 1 else None
    temperature = float(options[2]) if len(options) > 2 else 0.1
    quant_prob = float(options[3]) if len(options) > 3 else 0.3
    return lambda mode: tl.SparseFF(d_ff, n_elements_in_block=n, d_lowrank=d_lowrank,
                                    temperature=temperature, quant_prob=quant_prob,
                                    dropout=dropout, activation=activation, mode=mode)


def feed_forward(d_model: int, d_ff: int, ff_sparsity: Any = 0, dropout: float = 0.0,
                 activation: Callable[[], tl.Layer] = tl.Relu) -> Part:
    """Dense FF when ff_sparsity is 0/None, else SparseFF."""
    if not ff_sparsity:
        return dense_feed_forward(d_model, d_ff, dropout, activation)
    return sparse_feed_forward(d_ff, ff_sparsity, dropout, activation)


def sru_options(ff_use_sru: Any) -> tuple[int, int]:
    """(n_layers, n_units) from Trax's `ff_use_sru`: k, or (k, n_units); n_units default 32."""
    options = tuple(ff_use_sru) if isinstance(ff_use_sru, (tuple, list)) else (ff_use_sru,)
    if not 1 <= len(options) <= 2 or any(int(v) < 1 for v in options):
        raise ValueError(f'ff_use_sru must be k or (k, n_units) with positive ints, got '
                         f'{ff_use_sru!r}')
    return int(options[0]), int(options[1]) if len(options) > 1 else 32


def feed_forward_with_sru(ff: Part, d_model: int, ff_use_sru: Any) -> Part:
    """(x, mask) -> (FF(x) + Dense(SRU^k(Dense(x))), mask): the Terraformer's FF with the
    recurrence beside it (`ff_use_sru` = k or (k, n_units)). The mask keeps padding out of
    the recurrence."""
    n_layers, n_units = sru_options(ff_use_sru)
    return lambda mode: [                                                   # x, mask
        tl.Select([0, 1, 1]),                                               # x, mask, mask
        tl.Branch(tl.Serial(tl.Select([0], n_in=2), ff(mode)),             # FF(x)
                  tl.Serial(tl.Parallel(tl.Dense(n_units), None),          # x_u, mask
                            [tl.SRU(n_units, masked=True, mode=mode)
                             for _ in range(n_layers)],
                            tl.Select([0], n_in=2), tl.Dense(d_model))),   # ff, sru, mask
        tl.Add(),                                                           # y, mask
    ]


def causal_attention(d_model: int, n_heads: int, dropout: float = 0.0, max_len: int = 2048,
                     attention_type: str = 'dense', qkv_sparsity: int | None = None,
                     length_kernel_size: int = 3) -> Part:
    """'dense' = CausalAttention; 'sparse_qkv' = MultiplicativeConvCausalAttention."""
    if attention_type == 'dense':
        return lambda mode: tl.CausalAttention(d_model, n_heads, dropout, max_len, mode=mode)
    if attention_type == 'sparse_qkv':
        return lambda mode: tl.MultiplicativeConvCausalAttention(
            d_model, n_heads, sparsity=qkv_sparsity, length_kernel_size=length_kernel_size,
            dropout=dropout, max_len=max_len, mode=mode)
    raise ValueError(f"attention_type must be 'dense' or 'sparse_qkv', got {attention_type!r}")


def output_layer(vocab_size: int, loss_sparsity: int = 0, loss_sparsity_type: str = 'mult',
                 loss_d_lowrank: int | None = None) -> Part:
    """Logits layer: Dense, or the sparse loss layer (SparseDenseWithOptions)."""
    return lambda mode: tl.SparseDenseWithOptions(vocab_size, loss_sparsity_type, loss_sparsity,
                                                  loss_d_lowrank, mode=mode)


def DecoderBlock(attention: Part, ff: Part, dropout: float, mode: str) -> list:  # noqa: N802
    """Pre-LN block: x + Attn(LN x), then x + FF(LN x)."""
    return [                                                              # stack: x
        tl.Residual(tl.LayerNorm(), attention(mode), tl.Dropout(dropout, mode=mode)),
        tl.Residual(tl.LayerNorm(), ff(mode), tl.Dropout(dropout, mode=mode)),
    ]


def EncoderBlock(d_model: int, n_heads: int, ff: Part, dropout: float,  # noqa: N802
                 mode: str) -> list:
    """Pre-LN bidirectional block over (x, mask) -> (x, mask)."""
    return [                                                              # stack: x, mask
        tl.Residual(tl.LayerNorm(), tl.Attention(d_model, n_heads, dropout, mode=mode),
                    tl.Dropout(dropout, mode=mode)),                      # x, mask
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
                    mode: str) -> list:
    """Token ids [B, L] -> Embedding -> Dropout -> PositionalEncoding -> [B, L, d]."""
    return [tl.Embedding(vocab_size, d_model), tl.Dropout(dropout, mode=mode),
            tl.PositionalEncoding(max_len, mode=mode)]


def EncoderDecoderFront(encoder: tl.Layer, output_vocab_size: int, d_model: int,  # noqa: N802
                        dropout: float, max_len: int, mode: str,
                        predict_encoder: Callable[[tl.Layer], tl.Layer] = tl.Cache) -> list:
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
        embedding_stack(output_vocab_size, d_model, dropout, max_len, mode),
    ]                                                                   # x_d, enc, mask, tok_d
