"""Models: functions returning layers, each taking `mode` ('train' | 'eval' | 'predict').

Every model is built from parts (`models.parts`: attention, feed-forward, output layer),
which its arguments can replace (docs/architecture.md).

Example:
    >>> from trax_sparse import models
    >>> models.TransformerLM(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2).n_in
    1
    >>> ff = models.parts.feed_forward(8, 16, models.SparseFFConfig(4))
    >>> models.Terraformer(16, d_model=8, n_heads=2, ff=ff).n_in
    2
"""
from trax_sparse.models import parts
from trax_sparse.models.parts import SparseFFConfig
from trax_sparse.models.reformer import ReformerLM
from trax_sparse.models.scaling import ScalingTransformer, ScalingTransformerLM
from trax_sparse.models.terraformer import Terraformer
from trax_sparse.models.transformer import Transformer, TransformerLM

__all__ = ['ReformerLM', 'ScalingTransformer', 'ScalingTransformerLM', 'SparseFFConfig',
           'Terraformer', 'Transformer', 'TransformerLM', 'parts']
