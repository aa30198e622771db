"""Models: functions returning layers, each taking `mode` ('train' | 'eval' | 'predict').

Example:
    >>> from trax_sparse import models
    >>> models.TransformerLM(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2).n_in
    1
"""
from trax_sparse.models.reformer import ReformerLM
from trax_sparse.models.scaling import ScalingTransformer, ScalingTransformerLM
from trax_sparse.models.terraformer import Terraformer
from trax_sparse.models.transformer import Transformer, TransformerLM

__all__ = ['ReformerLM', 'ScalingTransformer', 'ScalingTransformerLM', 'Terraformer',
           'Transformer', 'TransformerLM']
