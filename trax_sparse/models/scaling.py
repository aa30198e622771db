"""Scaling Transformers: the Transformer models with sparse FF, sparse QKV and a sparse loss layer.

Same blocks as transformer.py; only the parts differ (docs/architecture.md):
- ff_sparsity: N (1-in-N SparseFF, d_lowrank d_ff/N) or a `SparseFFConfig(N, d_lowrank,
  temperature, quant_prob)`; 0 = dense FF (see `parts.sparse_ff_config`).
- attention_type: a kind of `parts.attention`: 'dense', 'sparse_qkv'
  (MultiplicativeConvCausalAttention with qkv_sparsity modules and a causal length
  kernel length_kernel_size) or 'lsh' (LSH attention with its default settings).
- loss_sparsity: S modules of the MultiplicativeDense output layer; 0 = Dense.

Example:
    >>> import numpy as np
    >>> from trax_sparse import shapes
    >>> from trax_sparse.models import ScalingTransformerLM
    >>> lm = ScalingTransformerLM(32, d_model=16, d_ff=32, n_layers=1, n_heads=2, ff_sparsity=4,
    ...                           attention_type='sparse_qkv', qkv_sparsity=4, loss_sparsity=2)
    >>> lm.output_signature(shapes.ShapeDtype((2, 5), np.int32)).shape
    (2, 5, 32)
"""
from typing import Callable

from trax_sparse import layers as tl
from trax_sparse.models import parts
from trax_sparse.models.options import check_kind
from trax_sparse.models.transformer import Transformer, TransformerLM


def _parts(model: str, vocab_size: int, d_model: int, d_ff: int, n_heads: int, dropout: float,
           max_len: int, ff_activation: Callable[[], tl.Layer], ff_sparsity: parts.FFSparsity,
           attention_type: str, qkv_sparsity: int | None, length_kernel_size: int,
           loss_sparsity: int) -> dict:
    check_kind(model, 'attention_type', attention_type, parts.ATTENTION_KINDS)
    return dict(
        attention=parts.attention(attention_type, d_model, n_heads, dropout=dropout,
                                  max_len=max_len, qkv_sparsity=qkv_sparsity,
                                  length_kernel_size=length_kernel_size),
        ff=parts.feed_forward(d_model, d_ff, ff_sparsity, dropout, ff_activation),
        output=parts.output_layer(vocab_size, loss_sparsity))


def ScalingTransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # noqa: N802
                         n_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
                         max_len: int = 2048, ff_activation: Callable[[], tl.Layer] = tl.Relu,
                         ff_sparsity: parts.FFSparsity = 0, attention_type: str = 'dense',
                         qkv_sparsity: int | None = None, length_kernel_size: int = 3,
                         loss_sparsity: int = 0, compute_dtype: str = 'float32',
                         mode: str = 'train') -> tl.Layer:
    """TransformerLM with the paper's sparse options (all off by default = the dense baseline).

    compute_dtype: the activations' dtype ('bfloat16' for mixed precision; docs/precision.md).
    """
    model_parts = _parts('ScalingTransformerLM', vocab_size, d_model, d_ff, n_heads, dropout, max_len, ff_activation,
                   ff_sparsity, attention_type, qkv_sparsity, length_kernel_size, loss_sparsity)
    return TransformerLM(vocab_size, d_model, n_layers=n_layers, n_heads=n_heads,
                         dropout=dropout, max_len=max_len, compute_dtype=compute_dtype,
                         mode=mode, **model_parts)


def ScalingTransformer(input_vocab_size: int, output_vocab_size: int | None = None,  # noqa: N802
                       d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                       n_decoder_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
                       max_len: int = 2048, ff_activation: Callable[[], tl.Layer] = tl.Relu,
                       ff_sparsity: parts.FFSparsity = 0, attention_type: str = 'dense',
                       qkv_sparsity: int | None = None, length_kernel_size: int = 3,
                       loss_sparsity: int = 0, encoder_d_ff: int | None = None,
                       compute_dtype: str = 'float32', mode: str = 'train') -> tl.Layer:
    """Encoder-decoder Scaling Transformer (the paper's C4 setting: sparse FF in both stacks,
    sparse QKV in the decoder self-attention, sparse loss).

    encoder_d_ff (default d_ff): the encoder keeps dense attention, so the paper
    configs widen only the decoder FF (4096 -> 6144) to make up for the
    parameters that sparse QKV saves; the encoder FF stays at 4096.
    """
    model_parts = _parts('ScalingTransformer', output_vocab_size or input_vocab_size, d_model, d_ff, n_heads, dropout,
                   max_len, ff_activation, ff_sparsity, attention_type, qkv_sparsity,
                   length_kernel_size, loss_sparsity)
    encoder_ff = parts.feed_forward(d_model, encoder_d_ff or d_ff, ff_sparsity, dropout,
                                    ff_activation)
    return Transformer(input_vocab_size, output_vocab_size, d_model,
                       n_encoder_layers=n_encoder_layers, n_decoder_layers=n_decoder_layers,
                       n_heads=n_heads, dropout=dropout, max_len=max_len,
                       encoder_ff=encoder_ff, compute_dtype=compute_dtype, mode=mode,
                       **model_parts)
