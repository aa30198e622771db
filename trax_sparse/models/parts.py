"""Parts: factories `mode -> layer` that the blocks of every model are built from.

One factory per kind of part, so every model builds its attention, feed-forward and output
layer the same way (docs/architecture.md):
- `attention(kind, d_model, n_heads, causal=..., masked=...)`: 'dense', 'sparse_qkv' or 'lsh';
- `feed_forward(d_model, d_ff, sparsity)`: dense, or SparseFF when `sparsity` is an int N or a
  `SparseFFConfig`; `feed_forward_with_sru` puts the Terraformer's recurrence beside one;
- `output_layer(vocab_size, loss_sparsity)`: Dense or the sparse loss layer.
A model takes parts as arguments (`TransformerLM(attention=..., ff=..., output=...)`) and
builds the defaults from its flags through these factories.

Example:
    >>> from trax_sparse.models import parts
    >>> ff = parts.feed_forward(d_model=16, d_ff=32)
    >>> [layer.name for layer in ff('eval')]
    ['Dense_32', 'Relu', 'Dropout', 'Dense_16']
    >>> parts.feed_forward(16, 32, parts.SparseFFConfig(4, temperature=0.5))('eval').name
    'SparseFF_32'
"""
import dataclasses
from typing import Any, Callable, Mapping

from trax_sparse import layers as tl

Part = Callable[[str], Any]   # mode -> Layer (or list of layers)
ATTENTION_KINDS = ('dense', 'sparse_qkv', 'lsh')


@dataclasses.dataclass(frozen=True)
class SparseFFConfig:
    """The paper's sparse feed-forward: 1 active unit in each block of `n_elements_in_block`.

    d_lowrank: rank of the controller (default d_ff / N); temperature: of the Gumbel noise;
    quant_prob: probability of the hard one-hot mask in training; kernel_scaling: W2
    initialized sqrt(N) larger; mask_after_activation: act(x W1) ⊙ mask, which gives the
    controller every unit's gradient (False: Trax's act((x W1) ⊙ mask)); load_balance:
    weight of the term against dead units (see `tl.SparseFF`).

        >>> SparseFFConfig(64, d_lowrank=32)
        SparseFFConfig(n_elements_in_block=64, d_lowrank=32, temperature=0.1, quant_prob=0.3, kernel_scaling=False, mask_after_activation=True, load_balance=0.0)
    """
    n_elements_in_block: int
    d_lowrank: int | None = None
    temperature: float = 0.1
    quant_prob: float = 0.3
    kernel_scaling: bool = False
    mask_after_activation: bool = True
    load_balance: float = 0.0

    def __post_init__(self):
        if int(self.n_elements_in_block) != self.n_elements_in_block or \
                self.n_elements_in_block < 1:
            raise ValueError(f'SparseFFConfig: n_elements_in_block must be a positive int, got '
                             f'{self.n_elements_in_block!r}')


FFSparsity = int | SparseFFConfig | None   # 0 / None = dense


def sparse_ff_config(ff_sparsity: Any) -> SparseFFConfig | None:
    """`ff_sparsity` as a SparseFFConfig: 0/None -> None (dense FF), N -> SparseFFConfig(N).

    A tuple (N, d_lowrank, temperature, quant_prob, kernel_scaling) or a prefix of it, the
    positional form that configs recorded before SparseFFConfig hold, is read as
    SparseFFConfig(*tuple).

        >>> sparse_ff_config(0) is None, sparse_ff_config((32, 30, 1.0)).temperature
        (True, 1.0)
    """
    if isinstance(ff_sparsity, SparseFFConfig):
        return ff_sparsity
    if isinstance(ff_sparsity, (tuple, list)):
        if not 1 <= len(ff_sparsity) <= 5:
            raise ValueError(f'ff_sparsity must be N, SparseFFConfig(N, d_lowrank, temperature, '
                             f'quant_prob, kernel_scaling) or that tuple; got {ff_sparsity!r}')
        return SparseFFConfig(*ff_sparsity)
    if not ff_sparsity:
        return None
    if isinstance(ff_sparsity, bool) or int(ff_sparsity) != ff_sparsity:
        raise ValueError(f'ff_sparsity must be N (an int), SparseFFConfig(...) or 0 (dense); '
                         f'got {ff_sparsity!r}')
    return SparseFFConfig(int(ff_sparsity))


def feed_forward(d_model: int, d_ff: int, sparsity: FFSparsity = None, dropout: float = 0.0,
                 activation: Callable[[], tl.Layer] = tl.Relu) -> Part:
    """x [B, L, d_model] -> [B, L, d_model]: Dense-activation-Dropout-Dense, or SparseFF.

    sparsity: None/0 (dense), N or a SparseFFConfig (see `sparse_ff_config`).
    """
    config = sparse_ff_config(sparsity)
    if config is None:
        return lambda mode: [tl.Dense(d_ff, axes=('embed', 'mlp')), activation(),
                             tl.Dropout(dropout, mode=mode),
                             tl.Dense(d_model, axes=('mlp', 'embed'))]
    return lambda mode: tl.SparseFF(
        d_ff, n_elements_in_block=config.n_elements_in_block, d_lowrank=config.d_lowrank,
        temperature=config.temperature, quant_prob=config.quant_prob, dropout=dropout,
        activation=activation, kernel_scaling=config.kernel_scaling,
        mask_after_activation=config.mask_after_activation,
        load_balance=config.load_balance, mode=mode)


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
                  tl.Serial(tl.Parallel(tl.Dense(n_units, axes=('embed', None)),  # x_u, mask
                                        None),
                            [tl.SRU(n_units, masked=True, mode=mode)
                             for _ in range(n_layers)],
                            tl.Select([0], n_in=2),
                            tl.Dense(d_model, axes=(None, 'embed')))),       # ff, sru, mask
        tl.Add(),                                                           # y, mask
    ]


def attention(kind: str, d_model: int, n_heads: int, causal: bool = True, masked: bool = False,
              dropout: float = 0.0, max_len: int = 2048, qkv_sparsity: int | None = None,
              length_kernel_size: int = 3, d_attention_key: int | None = None,
              d_attention_value: int | None = None,
              lsh: Mapping[str, Any] | None = None) -> Part:
    """Self-attention x [B, L, d_model] -> [B, L, d_model]; masked: (x, mask) -> (y, mask).

    kind: 'dense' (CausalAttention, or Attention when not causal), 'sparse_qkv'
    (MultiplicativeConvCausalAttention: qkv_sparsity modules, length_kernel_size; causal
    only) or 'lsh' (LSHSelfAttention with heads of d_attention_key / d_attention_value,
    default d_model / n_heads, and `lsh` = chunk_len, n_hashes, n_buckets, ...).
    Bidirectional attention takes the padding mask: causal=False needs masked=True.
    max_len: the predict-mode cache length.

        >>> attention('lsh', 8, 2, lsh=dict(chunk_len=4))('eval').name
        'LSHSelfAttention'
    """
    if kind not in ATTENTION_KINDS or (kind == 'sparse_qkv' and not causal):
        kinds = ATTENTION_KINDS if causal else ('dense', 'lsh')
        raise ValueError(f"{'causal' if causal else 'bidirectional'} attention kind must be one "
                         f'of {kinds}, got {kind!r}')
    if not causal and not masked:
        raise ValueError('bidirectional attention takes the padding mask: pass masked=True')
    if kind == 'dense' and not causal:
        return lambda mode: tl.Attention(d_model, n_heads, dropout, mode=mode)
    if kind == 'dense':
        return lambda mode: tl.CausalAttention(d_model, n_heads, dropout, max_len,
                                               masked=masked, mode=mode)
    if kind == 'sparse_qkv':
        return lambda mode: tl.MultiplicativeConvCausalAttention(
            d_model, n_heads, sparsity=qkv_sparsity, length_kernel_size=length_kernel_size,
            dropout=dropout, max_len=max_len, masked=masked, mode=mode)
    d_head = d_model // n_heads
    return lambda mode: tl.LSHSelfAttention(
        n_heads=n_heads, d_qk=d_attention_key or d_head, d_v=d_attention_value or d_head,
        causal=causal, masked=masked, output_dropout=dropout, predict_mem_len=max_len,
        mode=mode, **(lsh or {}))


def output_layer(vocab_size: int, loss_sparsity: int = 0, loss_sparsity_type: str = 'mult',
                 loss_d_lowrank: int | None = None) -> Part:
    """Logits layer x [..., d] -> [..., vocab_size]: Dense, or the sparse loss layer."""
    return lambda mode: tl.SparseDenseWithOptions(vocab_size, loss_sparsity_type, loss_sparsity,
                                                  loss_d_lowrank, mode=mode)


__all__ = ['ATTENTION_KINDS', 'FFSparsity', 'Part', 'SparseFFConfig', 'attention', 'feed_forward',
           'feed_forward_with_sru', 'output_layer', 'sparse_ff_config', 'sru_options']
