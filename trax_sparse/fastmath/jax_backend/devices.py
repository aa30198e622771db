"""The JAX backend's devices: meshes, shardings, multi-host and memory analysis.

Split from the package's __init__.py (its array operations) by responsibility, which re-exports
every name here, so callers keep using `fastmath.backend().<name>`.
"""
from typing import Any, Callable, Sequence

import jax
import numpy as onp


# ---- devices, data parallelism and debugging (used by trax_sparse.training) -----------------
def tree_flatten(tree: Any) -> tuple[list, Any]:
    """jax.tree_util.tree_flatten: (leaves, treedef) of any pytree (e.g. optax states)."""
    return jax.tree_util.tree_flatten(tree)


def tree_unflatten(treedef: Any, leaves: Sequence) -> Any:
    return jax.tree_util.tree_unflatten(treedef, list(leaves))


def replicate(tree: Any, mesh) -> Any:
    """Places every leaf of `tree` on all devices of `mesh` (NamedSharding, spec P())."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def shard_batch(tree: Any, mesh) -> Any:
    """Splits every leaf's axis 0 across `mesh` (multi-host: each process gives its local part)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
    if jax.process_count() > 1:
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, onp.asarray(x)), tree)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def make_mesh(axis_sizes: dict, devices: Sequence | None = None):
    """A Mesh with the named axes of `axis_sizes` (in its order) over the first prod(sizes)
    devices (all processes' devices, as jax orders them), every axis of Auto type."""
    # Shardy (the default partitioner of jax 0.10) miscompiles the Terraformer's reversible
    # decoder (custom_vjp around masked sparse QKV) on a {'data': 2, 'model': 4} FSDP mesh:
    # first loss 2.90 against 2.80 on one device; the GSPMD partitioner gives the one-device
    # numbers on every mesh tested (docs/sharding.md).
    jax.config.update('jax_use_shardy_partitioner', False)
    names, sizes = tuple(axis_sizes), tuple(int(n) for n in axis_sizes.values())
    devices = list(jax.devices() if devices is None else devices)
    count = int(onp.prod(sizes))
    if count > len(devices):
        raise ValueError(f'a mesh of {dict(axis_sizes)} needs {count} devices; jax sees '
                         f'{len(devices)}')
    return jax.make_mesh(sizes, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                         devices=devices[:count])


def named_shardings(mesh, spec_tree: Any) -> Any:
    """NamedShardings for a tree of specs (leaves: objects with `.names`, one mesh axis or None
    per array axis); the tree's containers are kept, so it fits jit's out_shardings."""
    def sharding(spec):
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec.names))
    return jax.tree_util.tree_map(sharding, spec_tree, is_leaf=lambda x: hasattr(x, 'names'))


def replicated(mesh):
    """The NamedSharding of an array held whole by every device of `mesh`."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def put_sharded(tree: Any, shardings: Any) -> Any:
    """Global arrays with the given shardings: each device receives only its shard (from host
    arrays, or from device arrays resharded). Every process passes the same full values."""
    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = onp.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree_util.tree_map(put, tree, shardings)


def memory_analysis(jitted: Callable, *args: Any) -> dict:
    """Bytes of the compiled `jitted(*args)` per device (XLA's memory analysis): arguments,
    outputs, aliased (donated), temporaries and generated code."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return {'arguments': int(stats.argument_size_in_bytes),
            'outputs': int(stats.output_size_in_bytes),
            'aliased': int(stats.alias_size_in_bytes),
            'temporaries': int(stats.temp_size_in_bytes),
            'code': int(stats.generated_code_size_in_bytes)}


def saved_residual_bytes(fn: Callable, *args: Any) -> dict:
    """Bytes autodiff keeps from `fn(*args)`'s forward pass for its backward (the residuals
    of jax.vjp), by dtype name; shapes only (jax.eval_shape: nothing computed). What a
    training step holds between its forward and backward passes on any platform, where XLA's
    memory analysis is the compiled step of this one."""
    def residuals(*a):
        return jax.tree_util.tree_leaves(jax.vjp(fn, *a)[1])
    by_dtype: dict = {}
    for leaf in jax.eval_shape(residuals, *args):
        name = onp.dtype(leaf.dtype).name
        by_dtype[name] = by_dtype.get(name, 0) + int(leaf.size) * onp.dtype(leaf.dtype).itemsize
    return by_dtype


def sharding_device_count(x: Any) -> int:
    """How many devices hold a part of array `x`."""
    return len(x.sharding.device_set)


def to_host(tree: Any) -> Any:
    """Copies every leaf to a host NumPy array (replicated multi-host arrays: the local copy)."""
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_fully_replicated:
                return onp.asarray(x.addressable_data(0))
            from jax.experimental import multihost_utils     # a split array: gather it
            return onp.asarray(multihost_utils.process_allgather(x, tiled=True))
        return onp.asarray(x)
    return jax.tree_util.tree_map(fetch, tree)


def block_until_ready(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def distributed_initialize(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """jax.distributed.initialize for multi-host runs (call before any other jax work)."""
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def process_any(flag: bool) -> bool:
    """Whether `flag` is True on any process (all processes must call this together)."""
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(onp.array([int(bool(flag))], onp.int32))
    return bool(onp.any(flags))


def set_debug_options(disable_jit: bool | None = None, debug_nans: bool | None = None) -> None:
    """Turns jit off and/or NaN checks (jax_debug_nans) on or off for the process."""
    if disable_jit is not None:
        jax.config.update('jax_disable_jit', bool(disable_jit))
    if debug_nans is not None:
        jax.config.update('jax_debug_nans', bool(debug_nans))


# ---- sharded checkpoints (used by trax_sparse.training.placement) -----------------------------
def array_pieces(x: Any) -> list:
    """The distinct pieces of a global array, each once: [(start, shape, process, local)],
    where `process` writes it (the process of the first device holding that slice, in the
    sharding's device order: the same answer on every process) and `local` is this process's
    device copy of the piece when it writes it, else None. A host array is one piece."""
    if not isinstance(x, jax.Array):
        a = onp.asarray(x)
        return [((0,) * a.ndim, a.shape, 0, a)]
    local = {shard.device: shard.data for shard in x.addressable_shards}
    me, seen, pieces = jax.process_index(), set(), []
    for device, index in x.sharding.devices_indices_map(x.shape).items():
        bounds = tuple(s.indices(n)[:2] for s, n in zip(index, x.shape))
        if bounds in seen:
            continue
        seen.add(bounds)
        start = tuple(b[0] for b in bounds)
        shape = tuple(b[1] - b[0] for b in bounds)
        mine = device.process_index == me
        pieces.append((start, shape, device.process_index, local[device] if mine else None))
    return pieces


def process_allgather(x: onp.ndarray) -> onp.ndarray:
    """Every process's `x` stacked on a new axis 0 (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return onp.asarray(x)[None]
    from jax.experimental import multihost_utils
    return onp.asarray(multihost_utils.process_allgather(onp.asarray(x)))


def put_from_callback(x: Any, sharding: Any) -> Any:
    """A global array of `x.shape` with `sharding` whose devices receive `x[index]` for their
    slice only (x: any object with shape, dtype and numpy-style slicing, e.g. a lazy reader of
    checkpoint pieces); each distinct slice is read once per process."""
    read: dict = {}

    def slice_of(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in read:
            read[key] = onp.asarray(x[index])
        return read[key]
    return jax.make_array_from_callback(tuple(x.shape), sharding, slice_of)
