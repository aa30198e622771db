"""ReformerLM: a reversible decoder-only LM with LSH attention (docs/architecture.md).

ShiftRight -> Embedding -> Dropout -> positions -> Dup -> ReversibleSerial of
RevNet blocks (LSH or dense causal attention, dense or sparse FF) ->
Concatenate (2·d_model) -> LayerNorm -> Dropout -> output layer (its input
width is inferred, so a sparse loss layer works, unlike Trax's).

Example:
    >>> import numpy as np
    >>> from trax_sparse import shapes
    >>> from trax_sparse.models import ReformerLM
    >>> lm = ReformerLM(16, d_model=8, d_ff=16, n_layers=1, n_heads=2, d_attention_key=4,
    ...                 d_attention_value=4, chunk_len=4, n_buckets=2, mode='eval')
    >>> lm.output_signature(shapes.ShapeDtype((2, 8), np.int32)).shape
    (2, 8, 16)
"""
from typing import Callable

from trax_sparse import layers as tl
from trax_sparse.models import blocks, parts
from trax_sparse.models import reversible_blocks as rb
from trax_sparse.models.options import check_kind, check_part_or_flags
from trax_sparse.models.parts import Part
from trax_sparse.precision import check_compute_dtype


def ReformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # noqa: N802
               n_layers: int = 6, n_heads: int = 8, d_attention_key: int = 64,
               d_attention_value: int = 64, attention_type: str = 'lsh', chunk_len: int = 64,
               n_hashes: int = 1, n_buckets: int | list | None = 64, n_chunks_before: int = 1,
               n_chunks_after: int = 0, attention_dropout: float = 0.0,
               ff_sparsity: parts.FFSparsity = 0, loss_sparsity: int = 0, dropout: float = 0.1,
               max_len: int = 2048, ff_activation: Callable[[], tl.Layer] = tl.FastGelu,
               attention: Part | None = None, ff: Part | None = None,
               output: Part | None = None, compute_dtype: str = 'float32',
               mode: str = 'train') -> tl.Layer:
    """Token ids [B, L] -> logits [B, L, vocab_size].

    compute_dtype: the activations' dtype, as in TransformerLM (docs/precision.md).

    attention / ff / output are parts (mode -> layer), as in TransformerLM; by default
    they are built from the flags: attention_type ('lsh', 'dense' or 'sparse_qkv') with
    the LSH settings, ff_sparsity, loss_sparsity.
    """
    tl.check_mode(mode, 'ReformerLM')
    compute_dtype = check_compute_dtype('ReformerLM', compute_dtype)
    check_kind('ReformerLM', 'attention_type', attention_type, parts.ATTENTION_KINDS)
    check_part_or_flags('ReformerLM', 'attention', attention,
                        attention_type=(attention_type, 'lsh'), chunk_len=(chunk_len, 64),
                        n_hashes=(n_hashes, 1), n_buckets=(n_buckets, 64),
                        n_chunks_before=(n_chunks_before, 1), n_chunks_after=(n_chunks_after, 0),
                        attention_dropout=(attention_dropout, 0.0),
                        d_attention_key=(d_attention_key, 64),
                        d_attention_value=(d_attention_value, 64))
    check_part_or_flags('ReformerLM', 'ff', ff, d_ff=(d_ff, 2048), ff_sparsity=(ff_sparsity, 0),
                        ff_activation=(ff_activation, tl.FastGelu))
    check_part_or_flags('ReformerLM', 'output', output, loss_sparsity=(loss_sparsity, 0))
    lsh = dict(chunk_len=chunk_len, n_hashes=n_hashes, n_buckets=n_buckets,
               n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
               attention_dropout=attention_dropout)
    attention = attention or parts.attention(
        attention_type, d_model, n_heads, dropout=dropout, max_len=max_len,
        d_attention_key=d_attention_key, d_attention_value=d_attention_value, lsh=lsh)
    ff = ff or parts.feed_forward(d_model, d_ff, ff_sparsity, dropout, ff_activation)
    output = output or parts.output_layer(vocab_size, loss_sparsity)
    return tl.Serial(                                                    # tokens [B, L]
        tl.ShiftRight(mode=mode),
        blocks.embedding_stack(vocab_size, d_model, dropout, max_len, mode,
                               compute_dtype),                           # [B, L, d]
        tl.Dup(),                                                        # x1, x2
        tl.ReversibleSerial([rb.ReversibleBlock([attention], ff, dropout, mode)
                             for _ in range(n_layers)]),
        tl.Concatenate(),                                                # [B, L, 2d]
        tl.LayerNorm(),
        tl.Dropout(dropout, mode=mode),
        output(mode),                                                    # logits [B, L, V]
        name='ReformerLM')
