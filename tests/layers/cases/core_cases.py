"""Registry cases for the core layers and metrics."""
import numpy as np

from trax_sparse import layers as tl
from tests.layers.cases import Case, floats, ints


def _loss_inputs():
    return (floats(2, 3, 5), ints(2, 3, high=5), np.array([[1, 1, 0], [1, 0.5, 1]], np.float32))


CASES = [
    Case('Dense', lambda mode: tl.Dense(4), lambda: floats(2, 3)),
    Case('Embedding', lambda mode: tl.Embedding(7, 4), lambda: ints(2, 3, high=7)),
    Case('Embedding', lambda mode: tl.Embedding(7, 4, compute_dtype='bfloat16'),
         lambda: ints(2, 3, high=7), grad_check=False, id='Embedding_bfloat16'),
    Case('Dropout', lambda mode: tl.Dropout(0.5, mode=mode), lambda: floats(2, 6),
         grad_check=False),
    Case('LayerNorm', lambda mode: tl.LayerNorm(), lambda: floats(2, 3, 6)),
    Case('Relu', lambda mode: tl.Relu(), lambda: floats(2, 5), grad_check=False),
    Case('Gelu', lambda mode: tl.Gelu(), lambda: floats(2, 5)),
    Case('FastGelu', lambda mode: tl.FastGelu(), lambda: floats(2, 5)),
    Case('LogSoftmax', lambda mode: tl.LogSoftmax(), lambda: floats(2, 5)),
    Case('Add', lambda mode: tl.Add(), lambda: (floats(2, 3), floats(2, 3, seed=1))),
    Case('Concatenate', lambda mode: tl.Concatenate(3, axis=-1),
         lambda: (floats(2, 3), floats(2, 1, seed=1), floats(2, 2, seed=2))),
    Case('Mean', lambda mode: tl.Mean(axis=1), lambda: floats(2, 3, 4)),
    Case('ShiftRight', lambda mode: tl.ShiftRight(mode=mode), lambda: floats(2, 4, 3)),
    Case('PositionalEncoding', lambda mode: tl.PositionalEncoding(8, mode=mode),
         lambda: floats(2, 5, 6)),
    Case('CrossEntropyLoss', lambda mode: tl.CrossEntropyLoss(), _loss_inputs),
    Case('Accuracy', lambda mode: tl.Accuracy(), _loss_inputs, grad_check=False),
    Case('CrossEntropyLoss', lambda mode: tl.CrossEntropyLoss(pad_id=0),
         lambda: (floats(2, 3, 5), ints(2, 3, high=5)), id='CrossEntropyLoss_pad_id'),
]
