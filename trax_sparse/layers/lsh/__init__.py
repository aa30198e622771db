"""LSH attention (Reformer): the layer and its algorithm, one module per part.

- `layer.py`: `LSHSelfAttention`, the layer (modes, state, custom backward).
- `core.py`: chunked attention over bucket-sorted positions (the fast path).
- `hashing.py`: random rotations, buckets (also factorized), portable random bits.
- `predict.py`: the decoding cache and rule.

The loop oracle the tests compare with is tests/layers/lsh_reference.py.
"""
from trax_sparse.layers.lsh.layer import LSHSelfAttention

__all__ = ['LSHSelfAttention']
