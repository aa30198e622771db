"""Decoding from predict-mode models: sampling (greedy, temperature, top-k) and beam search.

Example:
    >>> from trax_sparse import decoding
    >>> sorted(n for n in decoding.__all__ if not n.startswith('_'))[:2]
    ['autoregressive_sample', 'autoregressive_sample_stream']
"""
from trax_sparse.decoding.beam_search import beam_search, length_normalizer
from trax_sparse.decoding.sampling import (autoregressive_sample, autoregressive_sample_stream,
                                           sample_logits)

__all__ = ['autoregressive_sample', 'autoregressive_sample_stream', 'beam_search',
           'length_normalizer', 'sample_logits']
