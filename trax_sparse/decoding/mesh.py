"""Decoding with the weights and the predict state split over a device mesh (JAX only).

`DecodingMesh(mesh_shape={'data': 1, 'model': 8})` names a mesh as training does
(docs/sharding.md). Given as `mesh=` to `autoregressive_sample(_stream)` or
`beam_search`, it places
- the weights as their logical axes and the rules say (`sharding.partition_specs`):
  tensor parallel over 'model' for 'heads', 'mlp' and 'vocab' (and with `fsdp` the
  largest remaining axis over 'data'); a mesh all on 'data' without fsdp replicates
  them;
- the predict state: every leaf that runs over the batch has its axis 0 on 'data'
  when the 'data' size divides the batch, and the attention K/V caches
  `[B, H, max_len, d_h]` (the batch-indexed leaves of rank 4) have their axis 1, the
  heads, on 'model' when the 'model' size divides it; every other leaf (positions,
  counters) is replicated;
and jits the step with those shardings as the state's output shardings (the state is
donated, so the caches stay split and are updated in place). The logits come back
replicated. Splitting never changes what is computed: tokens equal one device's.
NumPy decoding runs on the host: a mesh there is a ValueError.

Example (one device: a 1-device mesh; the 8-device form is in docs/sharding.md):
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> with fastmath.use_backend('jax'):
    ...     model = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
    ...     _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    ...     mesh = DecodingMesh({'data': 1, 'model': 1})
    ...     weights = mesh.place_weights(model, model.weights)
    >>> mesh.mesh_shape
    {'data': 1, 'model': 1}
"""
from typing import Any, Mapping, Sequence

from trax_sparse import fastmath, sharding, shapes
from trax_sparse.decoding.predict_state import batch_leaf_mask
from trax_sparse.layers.base import Layer


class DecodingMesh:
    """A named device mesh and the rules that split predict-mode weights and caches over it.

    mesh_shape: axis name -> size, with a 'data' axis (default: every device on 'data').
    axis_rules: logical axis -> mesh axis (default sharding.DEFAULT_RULES).
    fsdp: also split the largest remaining axis of each weight over 'data'.
    """

    def __init__(self, mesh_shape: Mapping[str, int] | None = None,
                 axis_rules: Mapping[str, str | None] | Sequence | None = None,
                 fsdp: bool = False):
        if not fastmath.is_jax():
            raise ValueError(f'decoding on a mesh (mesh_shape={mesh_shape!r}) needs the JAX '
                             f'backend; NumPy decoding runs on the host: give no mesh')
        self._backend = fastmath.backend()
        if mesh_shape is None:
            mesh_shape = {sharding.DATA_AXIS: self._backend.device_count()}
        self.mesh_shape = sharding.check_mesh_shape(mesh_shape)
        self.rules, self.fsdp = sharding.rules_from(axis_rules), bool(fsdp)
        ordered = {sharding.DATA_AXIS: self.mesh_shape[sharding.DATA_AXIS],
                   **{k: v for k, v in self.mesh_shape.items() if k != sharding.DATA_AXIS}}
        self.mesh = self._backend.make_mesh(ordered)
        self.key = (tuple(ordered.items()), tuple(sorted(self.rules.items(), key=str)),
                    self.fsdp)

    @property
    def splits_weights(self) -> bool:
        """False when every weight is replicated (a mesh all on 'data', no fsdp)."""
        return self.fsdp or any(size > 1 for name, size in self.mesh_shape.items()
                                if name != sharding.DATA_AXIS)

    def weight_specs(self, model: Layer, weights: Any) -> Any:
        """A sharding.Spec per weight of `model` (its weight_axes and the rules)."""
        signature = fastmath.tree_map(shapes.signature, weights)
        if not self.splits_weights:
            return sharding.replicated_specs(signature)
        return sharding.partition_specs(model.weight_axes(), signature, self.mesh_shape,
                                        self.rules, self.fsdp, model.name)

    def place_weights(self, model: Layer, weights: Any) -> Any:
        """`weights` (host or device arrays) split over the mesh: each device gets its shard."""
        specs = self.weight_specs(model, weights)
        return self._backend.put_sharded(weights, self._backend.named_shardings(self.mesh,
                                                                                specs))

    def state_specs(self, state: Any, batch_mask: list[bool]) -> Any:
        """A sharding.Spec per predict state leaf (`batch_mask`: which leaves run over the
        batch, `predict_state.batch_leaf_mask`)."""
        leaves = fastmath.tree_leaves(state)
        specs = [sharding.Spec(*cache_spec(tuple(leaf.shape), is_batch, self.mesh_shape))
                 for leaf, is_batch in zip(leaves, batch_mask)]
        return fastmath.tree_unflatten_like(state, specs)

    def state_shardings(self, state: Any, batch_mask: list[bool]) -> Any:
        return self._backend.named_shardings(self.mesh, self.state_specs(state, batch_mask))

    def place(self, tree: Any, shardings: Any) -> Any:
        return self._backend.put_sharded(tree, shardings)

    @property
    def replicated(self) -> Any:
        """The sharding of an array held whole by every device (the logits)."""
        return self._backend.replicated(self.mesh)


def cache_spec(shape: tuple, batch_indexed: bool, mesh_shape: Mapping[str, int]) -> tuple:
    """The mesh axis (or None) of each axis of one predict state leaf.

        >>> cache_spec((2, 16, 64, 64), True, {'data': 2, 'model': 8})   # K/V [B, H, L, d_h]
        ('data', 'model', None, None)
        >>> cache_spec((3, 64), True, {'data': 2, 'model': 8})           # B = 3: not split
        (None, None)
    """
    spec: list = [None] * len(shape)
    data, model = (mesh_shape.get(sharding.DATA_AXIS, 1),
                   mesh_shape.get(sharding.MODEL_AXIS, 1))
    if batch_indexed and shape and data > 1 and shape[0] % data == 0:
        spec[0] = sharding.DATA_AXIS
    if batch_indexed and len(shape) == 4 and model > 1 and shape[1] % model == 0:
        spec[1] = sharding.MODEL_AXIS                          # heads of a K/V cache
    return tuple(spec)


def as_decoding_mesh(mesh: 'DecodingMesh | Mapping[str, int] | None') -> 'DecodingMesh | None':
    """None, a DecodingMesh, or a mesh_shape dict (made a DecodingMesh with default rules)."""
    if mesh is None or isinstance(mesh, DecodingMesh):
        return mesh
    if isinstance(mesh, Mapping):
        return DecodingMesh(mesh)
    raise ValueError(f"mesh must be a DecodingMesh or a mesh_shape dict such as "
                     f"{{'data': 1, 'model': 8}}; got {mesh!r}")


def place_for_decoding(mesh: DecodingMesh, model: Layer, weights: Any, state: Any,
                       inputs: Any, batch_size: int) -> tuple[Any, Any, Any]:
    """(weights, state, state shardings) on `mesh` for decoding `batch_size` rows (`inputs`:
    the encoder inputs [B, L_in] or None; they tell the state's batch-indexed leaves)."""
    def signature_for(rows: int) -> Any:
        tokens = shapes.ShapeDtype((rows, 1), 'int32')
        if inputs is None:
            return tokens
        return (shapes.ShapeDtype((rows,) + tuple(inputs.shape[1:]), inputs.dtype), tokens)

    mask = batch_leaf_mask(model, signature_for, batch_size)
    shardings = mesh.state_shardings(state, mask)
    return mesh.place_weights(model, weights), mesh.place(state, shardings), shardings
