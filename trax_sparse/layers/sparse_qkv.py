"""Sparse QKV attention of Scaling Transformers (docs/architecture.md).

One MultiplicativeDense shared by Q, K and V, then one convolution per
projection (kernel 3 across modules for Q and K, 1 for V; causal length kernel
lk; the three as one LocallyConvDenseBranch), then multi-head causal dot-product
attention with a K/V cache in predict mode. There is no output projection by default.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> from trax_sparse.layers import MultiplicativeConvCausalAttention
    >>> with fastmath.use_backend('numpy'):
    ...     attention = MultiplicativeConvCausalAttention(8, n_heads=2, sparsity=4, mode='eval')
    ...     attention(np.ones((2, 5, 8), np.float32)).shape
    (2, 5, 8)
"""
from trax_sparse.layers.attention import DotProductCausalAttention
from trax_sparse.layers.base import Fn, Layer, check_mode
from trax_sparse.layers.combinators import Select, Serial
from trax_sparse.layers.local_conv import LocallyConvDense, LocallyConvDenseBranch
from trax_sparse.layers.multiplicative import MultiplicativeDense

OUTPUT_LAYER_TYPES = ('none', 'mult', 'conv')


# The shared projection m: d_model in; out, the modules that the convolutions turn into heads.
M_AXES = ('embed', 'heads')


def MultiplicativeConvCausalAttention(  # noqa: N802 - Trax style.
        d_feature: int, n_heads: int = 1, sparsity: int | None = None,
        length_kernel_size: int = 3, dropout: float = 0.0, max_len: int = 2048,
        output_layer_type: str = 'none', masked: bool = False, mode: str = 'train') -> Layer:
    """Causal self-attention x [B, L, d_feature] -> [B, L, d_feature] with sparse Q/K/V.

    sparsity (S, default n_heads) is the number of modules; d_feature must be
    divisible by it. output_layer_type: 'none' (no projection), 'mult'
    (MultiplicativeDense(S, d_feature)) or 'conv' (LocallyConvDense with kernel 3).
    Parameters: d²/S + S·d + d (shared multiplicative layer) plus
    lk·(3 + 3 + 1)·(d/S)² + 3·d/S (the three convolutions).
    masked=True: (x, mask [B, L]) -> (y, mask); the convolutions' inputs are
    zeroed where mask is False and those keys are hidden, so masked positions
    (e.g. encoder padding in the Terraformer's joint sequence) affect nothing.

    Example:
        >>> MultiplicativeConvCausalAttention(16, n_heads=4, mode='predict').n_in
        1
    """
    name = 'MultiplicativeConvCausalAttention'
    check_mode(mode, name)
    sparsity = n_heads if sparsity is None else sparsity
    if int(sparsity) != sparsity or sparsity < 1:
        raise ValueError(f'{name}: sparsity must be a positive integer, got {sparsity!r}')
    if d_feature % sparsity:
        raise ValueError(f'{name}: d_feature={d_feature} must be divisible by '
                         f'sparsity={sparsity} (the number of modules)')
    if output_layer_type not in OUTPUT_LAYER_TYPES:
        raise ValueError(f'{name}: output_layer_type must be one of {OUTPUT_LAYER_TYPES}, got '
                         f'{output_layer_type!r}')
    sparsity, d_module = int(sparsity), d_feature // int(sparsity)

    def conv(kernel_size: int) -> Layer:
        return LocallyConvDense(sparsity, d_module, kernel_size=kernel_size,
                                length_kernel_size=length_kernel_size, mode=mode)

    qkv_convs = LocallyConvDenseBranch(sparsity, d_module, kernel_sizes=(3, 3, 1),
                                       length_kernel_size=length_kernel_size, mode=mode)
    output_layers = {'none': [],
                     'mult': MultiplicativeDense(sparsity, d_feature, axes=('heads', 'embed')),
                     'conv': conv(3)}[output_layer_type]
    core = DotProductCausalAttention(n_heads, dropout=dropout, max_len=max_len, mode=mode,
                                     masked=masked)
    if masked:
        zero_masked = Fn('ZeroMasked', lambda m, mask: m * (mask != 0)[..., None].astype(m.dtype))
        return Serial(                                            # x, mask
            Select([0, 1, 1, 1]),                                 # x, mask, mask, mask
            MultiplicativeDense(sparsity, d_feature, axes=M_AXES),  # m, mask, mask, mask
            zero_masked,                                          # m (0 where masked), mask, mask
            qkv_convs,                                            # q, k, v, mask, mask
            core,                                                 # y, mask
            output_layers,
            name=name)
    return Serial(
        MultiplicativeDense(sparsity, d_feature, axes=M_AXES),  # m: [B, L, d], shared by q, k, v
        qkv_convs,                                                # q, k, v: [B, L, d] each
        core,
        output_layers,                                            # [B, L, d]
        name=name)


__all__ = ['MultiplicativeConvCausalAttention']
