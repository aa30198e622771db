"""Data parallelism over devices (and hosts) with jax.sharding, through fastmath.

`DataParallel(n_devices)` builds a 1-D Mesh over the devices; batches are split
along axis 0 ('batch' axis, NamedSharding P('batch')) and weights and optimizer
state are replicated (P()), so a jit'd step computes the same global-batch loss
as on one device while XLA inserts the gradient all-reduce. Multi-host runs call
`initialize_distributed` first (jax.distributed.initialize); each process then
feeds its own part of the global batch.

Example:
    >>> from trax_sparse import fastmath
    >>> with fastmath.use_backend('jax'):
    ...     DataParallel(1).n_devices
    1
"""
from typing import Any

from trax_sparse import fastmath


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
    """True on the process that writes checkpoints and metrics (process 0)."""
    return process_index() == 0


class DataParallel:
    """A Mesh over `n_devices` (default: all): batch sharded, weights replicated."""

    def __init__(self, n_devices: int | None = None):
        self._backend = fastmath.backend()
        if fastmath.backend_name() != 'jax':
            raise ValueError('DataParallel needs the JAX backend')
        self.mesh = self._backend.data_parallel_mesh(n_devices)
        self.n_devices = int(self.mesh.devices.size)
        self.n_processes = self._backend.process_count()

    def replicate(self, tree: Any) -> Any:
        """Copies every leaf to all devices of the mesh."""
        return self._backend.replicate(tree, self.mesh)

    def shard_batch(self, batch: Any) -> Any:
        """Splits axis 0 of every leaf across the devices (this process's part on multi-host)."""
        local_devices = self.n_devices // self.n_processes
        for x in fastmath.tree_leaves(batch):
            shape = getattr(x, 'shape', ())
            if not shape or shape[0] % local_devices:
                raise ValueError(
                    f'data-parallel training on {self.n_devices} devices needs a batch size '
                    f'divisible by {local_devices} (devices per process); got a batch item of '
                    f'shape {tuple(shape)}: change the batch size or pass n_devices')
        return self._backend.shard_batch(batch, self.mesh)

    def to_host(self, tree: Any) -> Any:
        """NumPy copies of (replicated) device arrays."""
        return self._backend.to_host(tree)


__all__ = ['DataParallel', 'any_process', 'initialize_distributed', 'is_primary',
           'process_count', 'process_index']
