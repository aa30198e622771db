"""trax_sparse layers (import as `tl`): the Layer API, combinators and layers.

Example:
    >>> from trax_sparse import layers as tl
    >>> model = tl.Serial(tl.Embedding(16, 8), tl.Dense(16), tl.LogSoftmax())
    >>> model.n_in, model.n_out
    (1, 1)
"""
from trax_sparse.layers.attention import (Attention, CausalAttention, DotProductCausalAttention,
                                          EncDecAttention)
from trax_sparse.layers.base import (MODES, Fn, Layer, LayerError, PredictUse, PureLayer,
                                     check_mode, count_params, is_replaying, note_predict_use,
                                     recording_predict_use, replay_context, weights_signature)
from trax_sparse.layers.chunking import PositionwiseChunk
from trax_sparse.layers.combinators import (Branch, Cache, Chunk, Drop, Dup, Parallel, Residual,
                                            Scan, Select, Serial, Swap, is_empty_call)
from trax_sparse.layers.core import (Add, Concatenate, Dense, Dropout, Embedding, FastGelu, Gelu,
                                     LayerNorm, LogSoftmax, Mean, PositionalEncoding, Relu,
                                     ShiftRight)
from trax_sparse.layers.initializers import (GlorotNormalInitializer, GlorotUniformInitializer,
                                             LeCunUniformInitializer, OnesInitializer,
                                             RandomNormalInitializer, RandomUniformInitializer,
                                             VarianceScalingInitializer, ZerosInitializer)
from trax_sparse.layers.lsh import LSHSelfAttention
from trax_sparse.layers.metrics import Accuracy, CrossEntropyLoss
from trax_sparse.layers.local_conv import LocallyConvDense, LocallyConvDenseBranch
from trax_sparse.layers.multiplicative import MultiplicativeDense, SparseDenseWithOptions
from trax_sparse.layers.reversible import (ReversibleHalfResidual, ReversibleLayer,
                                           ReversibleSelect, ReversibleSerial, ReversibleSwap)
from trax_sparse.layers.sparse_ff import SparseFF
from trax_sparse.layers.sparse_qkv import MultiplicativeConvCausalAttention
from trax_sparse.layers.sru import SRU

__all__ = [
    # The layer API.
    'MODES', 'Fn', 'Layer', 'LayerError', 'PureLayer', 'check_mode', 'count_params',
    'is_replaying', 'replay_context', 'weights_signature',
    # The predict-mode contract (docs/predict_mode.md).
    'PredictUse', 'note_predict_use', 'recording_predict_use',
    # Combinators.
    'Branch', 'Cache', 'Chunk', 'Drop', 'Dup', 'Parallel', 'PositionwiseChunk', 'Residual', 'Scan',
    'Select', 'Serial', 'Swap', 'is_empty_call',
    # Core layers.
    'Add', 'Concatenate', 'Dense', 'Dropout', 'Embedding', 'FastGelu', 'Gelu', 'LayerNorm',
    'LogSoftmax', 'Mean', 'PositionalEncoding', 'Relu', 'ShiftRight',
    # Initializers.
    'GlorotNormalInitializer', 'GlorotUniformInitializer', 'LeCunUniformInitializer',
    'OnesInitializer', 'RandomNormalInitializer', 'RandomUniformInitializer',
    'VarianceScalingInitializer', 'ZerosInitializer',
    # Metrics.
    'Accuracy', 'CrossEntropyLoss',
    # Attention.
    'Attention', 'CausalAttention', 'DotProductCausalAttention', 'EncDecAttention',
    'LSHSelfAttention',
    # Reversible layers.
    'ReversibleHalfResidual', 'ReversibleLayer', 'ReversibleSelect', 'ReversibleSerial',
    'ReversibleSwap',
    # Sparse layers of Scaling Transformers.
    'LocallyConvDense', 'LocallyConvDenseBranch', 'MultiplicativeConvCausalAttention',
    'MultiplicativeDense',
    'SparseDenseWithOptions', 'SparseFF',
    # Recurrence (the Terraformer's SRU beside the feed-forward).
    'SRU',
]
