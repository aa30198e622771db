"""Processes and devices: jax.distributed for multi-host runs, and data parallelism.

`DataParallel(n_devices)` is the plain placement (training/placement.py): a mesh of the
devices on 'data'; batches are split along axis 0 and weights and optimizer state are
replicated, so a jit'd step computes the same global-batch loss as on one device while
XLA inserts the gradient all-reduce. Multi-host runs call
`initialize_distributed` first (jax.distributed.initialize); each process then
feeds its own part of the global batch.

Example:
    >>> from trax_sparse import fastmath
    >>> with fastmath.use_backend('jax'):
    ...     DataParallel(1).n_devices
    1
"""
from trax_sparse import fastmath
from trax_sparse.training.placement import Placement


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-host run (jax.distributed.initialize); call before any other jax use."""
    with fastmath.use_backend('jax'):
        fastmath.backend().distributed_initialize(coordinator_address, num_processes,
                                                  process_id)


def process_index() -> int:
    """This process's index in a multi-host run (0 on one host or on NumPy)."""
    if fastmath.backend_name() != 'jax':
        return 0
    return fastmath.backend().process_index()


def process_count() -> int:
    if fastmath.backend_name() != 'jax':
        return 1
    return fastmath.backend().process_count()


def any_process(flag: bool) -> bool:
    """Whether `flag` is True on any process of a multi-host run (every process must call
    this at the same point: it is a collective); `flag` itself on one process."""
    if process_count() == 1:
        return bool(flag)
    return fastmath.backend().process_any(flag)


def is_primary() -> bool:
    """True on the process that commits checkpoints and writes metrics (process 0)."""
    return process_index() == 0


class DataParallel(Placement):
    """A mesh of `n_devices` (default: all) on 'data': batch split, weights replicated."""

    def __init__(self, n_devices: int | None = None):
        super().__init__(n_devices=n_devices)


__all__ = ['DataParallel', 'any_process', 'initialize_distributed', 'is_primary',
           'process_count', 'process_index']
