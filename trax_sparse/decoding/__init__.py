"""Decoding from predict-mode models: sampling (greedy, temperature, top-k) and beam search.

Example:
    >>> from trax_sparse import decoding
    >>> sorted(n for n in decoding.__all__ if not n.startswith('_'))[:2]
    ['autoregressive_sample', 'autoregressive_sample_stream']
"""
from trax_sparse.decoding.beam_search import beam_search, length_normalizer
from trax_sparse.decoding.sampling import (autoregressive_sample, autoregressive_sample_stream,
                                           sample_logits)
from trax_sparse.decoding.timing import bytes_read_per_token, time_per_token

__all__ = ['autoregressive_sample', 'autoregressive_sample_stream', 'beam_search',
           'bytes_read_per_token', 'length_normalizer', 'sample_logits', 'time_per_token']
