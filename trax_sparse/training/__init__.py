"""Training: optax optimizers, LR schedules, TrainTask/EvalTask, Loop, checkpoints, train().

Importing this package needs neither jax nor optax (checkpoints load on NumPy for
inference); training itself runs on the JAX backend.

Example:
    >>> from trax_sparse import training
    >>> training.Adafactor().hyper_parameters['clipping_threshold']
    1.0
"""
from trax_sparse.training.checkpoint import (Checkpoint, CheckpointError, load_latest,
                                             load_weights, read_checkpoint, save_checkpoint)
from trax_sparse.training.checkpointer import CheckpointWriteError
from trax_sparse.training.distributed import (DataParallel, initialize_distributed, is_primary,
                                              process_count, process_index)
from trax_sparse.training.loop import (Loop, NonFiniteLossError, OutputDirError,
                                       prepare_output_dir)
from trax_sparse.training.loop import TIMING_METRICS
from trax_sparse.training.metrics_writer import MetricsWriter, read_metrics
from trax_sparse.training.optimizers import SGD, Adafactor, Adam, Optimizer
from trax_sparse.training.schedules import (constant, multifactor, warmup,
                                            warmup_and_rsqrt_decay)
from trax_sparse.training.tasks import EvalTask, TrainTask
from trax_sparse.training.train_lib import train

__all__ = [
    'Adafactor', 'Adam', 'Checkpoint', 'CheckpointError', 'CheckpointWriteError',
    'DataParallel', 'EvalTask', 'Loop', 'MetricsWriter', 'NonFiniteLossError', 'Optimizer',
    'OutputDirError', 'SGD', 'TIMING_METRICS', 'TrainTask',
    'constant', 'initialize_distributed', 'is_primary', 'load_latest', 'load_weights',
    'multifactor', 'prepare_output_dir', 'process_count', 'process_index', 'read_checkpoint',
    'read_metrics', 'save_checkpoint', 'train', 'warmup', 'warmup_and_rsqrt_decay',
]
