"""Registry cases for LSHSelfAttention (tiny shapes, several chunks and hash rounds).

The finite-difference check runs in eval with a fixed rng, so the buckets are
fixed and the custom gradient (recompute with the same buckets) is checked.
"""
import numpy as np

from trax_sparse import layers as tl
from tests.layers.cases import Case, floats


def _mask(batch: int, length: int) -> np.ndarray:
    lengths = np.array([length, length - 2][:batch])
    return np.arange(length)[None, :] < lengths[:, None]   # [B, L] bool


CASES = [
    Case('LSHSelfAttention',
         lambda mode: tl.LSHSelfAttention(n_heads=2, d_qk=3, d_v=4, causal=True, chunk_len=4,
                                          n_hashes=2, n_buckets=4, predict_mem_len=16,
                                          mode=mode),
         lambda: floats(2, 8, 6)),
    # Non-causal, masked, look-ahead, and a length (6) padded internally to 8.
    Case('LSHSelfAttention',
         lambda mode: tl.LSHSelfAttention(n_heads=2, d_qk=3, d_v=4, masked=True, chunk_len=4,
                                          n_chunks_after=1, n_hashes=2, n_buckets=4, mode=mode),
         lambda: (floats(2, 6, 6), _mask(2, 6)), predict_ok=False, id='LSHSelfAttention_masked'),
]
