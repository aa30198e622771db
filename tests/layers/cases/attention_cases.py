"""Registry cases for the dense attention layers (max_len covers the test length)."""
import numpy as np

from trax_sparse import layers as tl
from tests.layers.cases import Case, floats


def _padding_mask(batch: int, length: int) -> np.ndarray:
    lengths = np.array([length, length - 2][:batch])
    return np.arange(length)[None, :] < lengths[:, None]   # [B, L] bool


CASES = [
    Case('DotProductCausalAttention',
         lambda mode: tl.DotProductCausalAttention(n_heads=2, max_len=8, mode=mode),
         lambda: (floats(2, 4, 6), floats(2, 4, 6, seed=1), floats(2, 4, 6, seed=2))),
    Case('CausalAttention', lambda mode: tl.CausalAttention(6, n_heads=2, max_len=8, mode=mode),
         lambda: floats(2, 4, 6)),
    Case('Attention', lambda mode: tl.Attention(6, n_heads=2, mode=mode),
         lambda: (floats(2, 4, 6), _padding_mask(2, 4))),
    Case('EncDecAttention', lambda mode: tl.EncDecAttention(6, n_heads=2, mode=mode),
         lambda: (floats(2, 3, 6), floats(2, 5, 4, seed=1), _padding_mask(2, 5))),
]
