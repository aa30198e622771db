"""Registry cases for the sparse layers (SparseFF, multiplicative/conv projections, sparse QKV).

Variants (first-layer bias, GELU, no bias, output layers) are covered in
tests/layers/test_sparse_*.py.
"""
from trax_sparse import layers as tl
from tests.layers.cases import Case, floats

CASES = [
    Case('SparseFF', lambda mode: tl.SparseFF(8, n_elements_in_block=4, mode=mode),
         lambda: floats(2, 3, 6)),
    Case('SparseFF', lambda mode: tl.SparseFF(8, n_elements_in_block=4,
                                              mask_after_activation=True,
                                              load_balance=0.01, mode=mode),
         lambda: floats(2, 3, 6), id='SparseFF_balanced'),
    Case('MultiplicativeDense', lambda mode: tl.MultiplicativeDense(3, 6), lambda: floats(2, 3, 4)),
    Case('LocallyConvDense', lambda mode: tl.LocallyConvDense(2, 3, kernel_size=3,
                                                              length_kernel_size=3, mode=mode),
         lambda: floats(2, 4, 6)),
    Case('LocallyConvDenseBranch', lambda mode: tl.LocallyConvDenseBranch(
        2, 3, kernel_sizes=(3, 1), length_kernel_size=2, mode=mode), lambda: floats(2, 4, 6)),
    Case('MultiplicativeConvCausalAttention',
         lambda mode: tl.MultiplicativeConvCausalAttention(8, n_heads=2, sparsity=4, max_len=8,
                                                           mode=mode),
         lambda: floats(2, 4, 8)),
    Case('SparseDenseWithOptions', lambda mode: tl.SparseDenseWithOptions(6, 'mult', sparsity=2,
                                                                          mode=mode),
         lambda: floats(2, 3, 4)),
    Case('SparseDenseWithOptions', lambda mode: tl.SparseDenseWithOptions(
        6, 'lowrank', sparsity=2, d_lowrank=2, mode=mode), lambda: floats(2, 3, 4),
         id='SparseDenseWithOptions_lowrank'),
]
