"""Where the train state and the batches live: a named device mesh and the sharding rules.

`Placement(mesh_shape={'data': 2, 'model': 4}, fsdp=True)` builds a mesh over the devices
of every process. Batches are split over 'data'. Weights are split as the model's logical
axis names (`Layer.weight_axes`) and the rules say (`trax_sparse.sharding`): tensor
parallelism over 'model', and with `fsdp` the largest remaining axis of each weight over
'data'; the optimizer state's copies of the weights (Adam's moments) are split like them;
everything else is replicated. The default, `{'data': all devices}` without FSDP, is plain
data parallelism: every weight replicated. Sharding never changes what a step computes.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> with fastmath.use_backend('jax'):
    ...     placement = Placement()
    ...     model = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
    ...     sig = model.weights_signature(shapes.ShapeDtype((2, 3), np.int32))
    ...     placement.weight_specs(model, sig)
    ((Spec(None, None),), (Spec(None, None), Spec(None,)))
"""
from typing import Any, Mapping, Sequence

import numpy as np

from trax_sparse import fastmath, shapes, sharding
from trax_sparse import layers as tl
from trax_sparse.training.checkpoint_shards import PieceReader
from trax_sparse.training.train_step import TrainState

_RECORD_BYTES = 8 + 8 + 32   # Placement.exchange: status, bytes, sha256


class Placement:
    """A device mesh with named axes, its sharding rules, and moves between host and devices.

    mesh_shape: axis name -> size, with a 'data' axis (default: {'data': n_devices}).
    n_devices: the devices to use (default: all; the product of mesh_shape's sizes).
    axis_rules: logical axis -> mesh axis (default sharding.DEFAULT_RULES).
    fsdp: also split the largest remaining axis of each weight over 'data'.
    """

    def __init__(self, mesh_shape: Mapping[str, int] | None = None,
                 axis_rules: Mapping[str, str | None] | Sequence | None = None,
                 fsdp: bool = False, n_devices: int | None = None):
        if fastmath.backend_name() != 'jax':
            raise ValueError('placing arrays on devices needs the JAX backend')
        self._backend = fastmath.backend()
        available = self._backend.device_count()
        if n_devices is not None and not 1 <= int(n_devices) <= available:
            raise ValueError(f'n_devices must be in [1, {available}] (the devices jax sees), '
                             f'got {n_devices}')
        if mesh_shape is None:
            mesh_shape = {sharding.DATA_AXIS: int(n_devices or available)}
        self.mesh_shape = sharding.check_mesh_shape(mesh_shape, n_devices)
        self.rules, self.fsdp = sharding.rules_from(axis_rules), bool(fsdp)
        # 'data' first: batches are split over the mesh's first axis.
        ordered = {sharding.DATA_AXIS: self.mesh_shape[sharding.DATA_AXIS],
                   **{k: v for k, v in self.mesh_shape.items() if k != sharding.DATA_AXIS}}
        self.mesh = self._backend.make_mesh(ordered)
        self.n_devices = int(self.mesh.devices.size)
        self.n_processes = self._backend.process_count()
        self.process_index = self._backend.process_index()

    @property
    def splits_weights(self) -> bool:
        """False for plain data parallelism (every weight replicated)."""
        return self.fsdp or any(size > 1 for name, size in self.mesh_shape.items()
                                if name != sharding.DATA_AXIS)

    def describe(self) -> dict:
        return {'mesh': dict(self.mesh_shape), 'fsdp': self.fsdp,
                'processes': self.n_processes, 'devices': self.n_devices}

    # ---- specs ----------------------------------------------------------------------------------
    def weight_specs(self, model: tl.Layer, weights_signature: Any) -> Any:
        """A sharding.Spec per weight of `model` (from its weight_axes and the rules)."""
        if not self.splits_weights:
            return sharding.replicated_specs(weights_signature)
        return sharding.partition_specs(model.weight_axes(), weights_signature,
                                        self.mesh_shape, self.rules, self.fsdp, model.name)

    def train_state_specs(self, model: tl.Layer, train_state_signature: TrainState
                          ) -> TrainState:
        """Specs of (weights, model state, optimizer state): the model state is replicated."""
        weights, state, opt_state = train_state_signature
        specs = self.weight_specs(model, weights)
        return TrainState(specs, sharding.replicated_specs(state),
                          sharding.specs_like(opt_state, weights, specs))

    def shardings(self, specs: Any) -> Any:
        """The NamedShardings of a tree of specs."""
        return self._backend.named_shardings(self.mesh, specs)

    @property
    def replicated(self) -> Any:
        return self._backend.replicated(self.mesh)

    # ---- moving arrays --------------------------------------------------------------------------
    def place(self, tree: Any, shardings: Any) -> Any:
        """Puts `tree` on the mesh with `shardings`: each device receives its shard only.

        Leaves: host or device arrays (the same full values on every process), or lazy
        readers of a checkpoint (checkpoint_shards.PieceReader: each device reads its slice).
        """
        leaves, treedef = self._backend.tree_flatten(tree)
        targets, _ = self._backend.tree_flatten(shardings)
        if len(targets) != len(leaves):
            raise ValueError(f'place: {len(leaves)} arrays but {len(targets)} shardings')
        placed = [self._backend.put_from_callback(x, s) if isinstance(x, PieceReader)
                  else self._backend.put_sharded(x, s) for x, s in zip(leaves, targets)]
        return self._backend.tree_unflatten(treedef, placed)

    def replicate(self, tree: Any) -> Any:
        """Copies every leaf to all devices of the mesh."""
        return self._backend.replicate(tree, self.mesh)

    def shard_batch(self, batch: Any) -> Any:
        """Splits axis 0 of every leaf over 'data' (this process's part on multi-host)."""
        local = self.mesh_shape[sharding.DATA_AXIS] // self.n_processes or 1
        for x in fastmath.tree_leaves(batch):
            shape = getattr(x, 'shape', ())
            if not shape or shape[0] % local:
                raise ValueError(
                    f"training on a mesh {dict(self.mesh_shape)} needs a batch size divisible "
                    f"by {local} (the 'data' axis per process); got a batch item of shape "
                    f"{tuple(shape)}: change the batch size or the mesh")
        return self._backend.shard_batch(batch, self.mesh)

    def to_host(self, tree: Any) -> Any:
        """NumPy copies of device arrays (split ones gathered)."""
        return self._backend.to_host(tree)

    # ---- sharded checkpoints --------------------------------------------------------------------
    def pieces(self, leaf: Any) -> list:
        """The distinct pieces of a (global) array: [(start, shape, writing process, this
        process's device copy or None)], the same list on every process."""
        return self._backend.array_pieces(leaf)

    def exchange(self, record: tuple[int, int, str]) -> list[tuple[int, int, str]]:
        """Every process's (status, n_bytes, sha256 hex or '') record, in process order: a
        collective that all processes call at the same point (checkpoint.save_checkpoint)."""
        status, n_bytes, digest = record
        packed = np.zeros(_RECORD_BYTES, np.uint8)
        packed[:8] = np.frombuffer(np.int64(status).tobytes(), np.uint8)
        packed[8:16] = np.frombuffer(np.int64(n_bytes).tobytes(), np.uint8)
        packed[16:] = np.frombuffer(bytes.fromhex(digest or '00' * 32), np.uint8)
        gathered = self._backend.process_allgather(packed).reshape(-1, _RECORD_BYTES)
        return [(int(row[:8].view(np.int64)[0]), int(row[8:16].view(np.int64)[0]),
                 row[16:].tobytes().hex() if row[16:].any() else '')
                for row in gathered]

    # ---- memory ---------------------------------------------------------------------------------
    def memory(self, signature: TrainState, specs: TrainState,
               step_memory: dict | None = None) -> dict:
        """Bytes of weights and optimizer state (total and per device) and, from XLA's memory
        analysis of the compiled step, its temporaries per device."""
        report = {}
        for name, sig, spec in (('weights', signature.weights, specs.weights),
                                ('optimizer', signature.opt_state, specs.opt_state)):
            total = sum(x.size * x.dtype.itemsize for x in fastmath.tree_leaves(sig))
            report[name] = {'total': total, 'per_device': sharding.bytes_per_device(
                sig, spec, self.mesh_shape)}
        if step_memory is not None:
            report['temporaries'] = {'per_device': step_memory['temporaries']}
        return report




def initialize_on_mesh(placement: Placement, model: tl.Layer, init_fn: Any, key: Any,
                       jit: Any) -> tuple[dict, TrainState]:
    """`init_fn(key)` (train_step.initialize) run under `jit` with its weights and optimizer
    state created already split (no full copy on one device when the mesh splits weights);
    returns its values and the specs of the train state."""
    if not placement.splits_weights:             # data parallel: init once, then replicate
        values = jit(init_fn)(key)
        abstract = _signatures(values)
    else:
        values, abstract = None, fastmath.abstract_eval(init_fn)(shapes.signature(key))
    specs = placement.train_state_specs(model, TrainState(
        abstract['weights'], abstract['state'], abstract['opt_state']))
    if values is not None:
        return values, specs
    out = {name: placement.replicated for name in abstract}
    out['weights'] = placement.shardings(specs.weights)
    out['opt_state'] = placement.shardings(specs.opt_state)
    return jit(init_fn, out_shardings=out)(key), specs



def run_info(placement: Placement, specs: TrainState, step_args: tuple,
             jitted_step: Any = None) -> dict:
    """What run_info.json holds: the mesh, processes and devices, and bytes of the weights
    and optimizer state (total, per device) and, with the jit'd step, its temporaries per
    device from XLA's memory analysis (`step_args`: its arguments, the train state first)."""
    memory = None
    if jitted_step is not None:
        memory = fastmath.backend().memory_analysis(jitted_step, *step_args)
    signature = TrainState(*(_signatures(tree) for tree in step_args[0]))
    return {**placement.describe(), 'bytes': placement.memory(signature, specs, memory)}


def _signatures(tree: Any) -> Any:
    """ShapeDtypes of a pytree's arrays, its containers (optax's named tuples) kept."""
    backend = fastmath.backend()
    leaves, treedef = backend.tree_flatten(tree)
    return backend.tree_unflatten(treedef, [shapes.signature(x) for x in leaves])


__all__ = ['Placement', 'initialize_on_mesh', 'run_info']
