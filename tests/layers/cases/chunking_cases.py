"""Registry cases for PositionwiseChunk (a chunked FF and a chunked SparseFF)."""
from trax_sparse import layers as tl
from tests.layers.cases import Case, floats

CASES = [
    Case('PositionwiseChunk',
         lambda mode: tl.PositionwiseChunk(tl.Serial(tl.Dense(8), tl.Relu(), tl.Dense(3)), 2),
         lambda: floats(2, 5, 3)),
    Case('PositionwiseChunk',
         lambda mode: tl.PositionwiseChunk(tl.SparseFF(8, n_elements_in_block=4, mode=mode), 3),
         lambda: floats(2, 7, 4), id='PositionwiseChunk_SparseFF'),
]
