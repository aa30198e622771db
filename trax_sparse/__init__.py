"""trax_sparse: sparse Scaling Transformers and the Terraformer, on NumPy or JAX.

Example:
    >>> from trax_sparse import fastmath, layers as tl
    >>> tl.Serial(tl.Dense(4), tl.Relu()).n_in
    1
"""
from trax_sparse import decoding, fastmath, layers, models, shapes

__version__ = '0.1.0'
__all__ = ['decoding', 'fastmath', 'layers', 'models', 'shapes', '__version__']
