"""Registry cases for the recurrence (SRU): identity and GELU on the cell."""
import numpy as np

from trax_sparse import layers as tl
from tests.layers.cases import Case, floats

CASES = [
    Case('SRU', lambda mode: tl.SRU(4, mode=mode), lambda: floats(2, 5, 4)),
    Case('SRU', lambda mode: tl.SRU(4, activation=tl.Gelu, mode=mode), lambda: floats(2, 5, 4),
         id='SRU_with_activation'),
]
CASES.append(Case('SRU', lambda mode: tl.SRU(4, masked=True, mode=mode),
                  lambda: (floats(2, 5, 4), np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)),
                  id='SRU_masked'))
