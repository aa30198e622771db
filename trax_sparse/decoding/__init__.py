"""Decoding from predict-mode models: sampling (greedy, temperature, top-k) and beam search.

Example:
    >>> from trax_sparse import decoding
    >>> sorted(n for n in decoding.__all__ if n.islower())[:2]
    ['autoregressive_sample', 'autoregressive_sample_stream']
"""
from trax_sparse.decoding.beam_search import beam_search, length_normalizer
from trax_sparse.decoding.mesh import DecodingMesh, cache_spec, place_for_decoding
from trax_sparse.decoding.predict_state import (PredictStep, fresh_state,
                                                init_predict_state, later_inputs, predict_step,
                                                start_decoding)
from trax_sparse.decoding.sampling import (autoregressive_sample, autoregressive_sample_stream,
                                           sample_logits)
from trax_sparse.decoding.storage import (CACHE_DTYPES, WEIGHTS_DTYPES, check_cache_dtype,
                                          check_weights_dtype, resolve_weights_dtype,
                                          storage_note, store_weights, stored_dtypes,
                                          with_cache_dtype)
from trax_sparse.decoding.stored_loss import compare_storage, stored_loss
from trax_sparse.decoding.timing import bytes_read_per_token, time_per_token

__all__ = ['CACHE_DTYPES', 'DecodingMesh', 'PredictStep', 'WEIGHTS_DTYPES',
           'autoregressive_sample', 'autoregressive_sample_stream', 'beam_search',
           'bytes_read_per_token', 'cache_spec', 'check_cache_dtype', 'check_weights_dtype',
           'compare_storage',
           'fresh_state', 'init_predict_state', 'later_inputs', 'length_normalizer',
           'place_for_decoding', 'predict_step', 'resolve_weights_dtype', 'sample_logits',
           'start_decoding', 'storage_note', 'store_weights', 'stored_dtypes', 'stored_loss', 'time_per_token',
           'with_cache_dtype']
