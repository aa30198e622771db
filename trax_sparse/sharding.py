"""Logical axis names of weights, and the rules that map them to the axes of a device mesh.

Every layer names the axes of the weights it creates (`Layer.weight_axes()`: an
`Axes` per weight, e.g. a feed-forward's first matrix is `Axes('embed', 'mlp')`).
A mesh is a dict of named axes and their sizes (`{'data': 2, 'model': 4}`). The
rules map logical names to mesh axes: tensor parallelism puts 'mlp', 'heads' and
'vocab' on 'model'; FSDP (`fsdp=True`) then splits the largest remaining axis of
each weight over 'data' (and over 'model' when no rule used it). An axis is split only when the mesh axis divides it, so
every rule is safe for every model: sharding changes where a weight lives, never
what the step computes. Pure Python: the JAX backend turns the specs into
`NamedSharding`s.

Example:
    >>> from trax_sparse import shapes
    >>> sig = shapes.ShapeDtype((512, 2048))
    >>> partition_spec(Axes('embed', 'mlp'), sig, {'data': 2, 'model': 4})
    (None, 'model')
    >>> partition_spec(Axes('embed', 'mlp'), sig, {'data': 2, 'model': 4}, fsdp=True)
    ('data', 'model')
"""
from typing import Any, Mapping, Sequence

import numpy as np

from trax_sparse.fastmath.tree import tree_leaves, tree_map, tree_structure


class Axes:
    """The logical names of a weight's axes, one per dimension (None: an axis no rule splits).

    A leaf of a layer's `weight_axes()` tree (not a tuple, so tree maps keep it whole).

    Example:
        >>> Axes('vocab', 'embed').names
        ('vocab', 'embed')
    """

    __slots__ = ('names',)

    def __init__(self, *names: str | None):
        self.names = tuple(names)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Axes) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f'Axes{self.names!r}'


class Spec(Axes):
    """A weight's mesh axes, one per dimension (None: not split): a PartitionSpec as a leaf.

    Example:
        >>> Spec(None, 'model').names
        (None, 'model')
    """

    def __repr__(self) -> str:
        return f'Spec{self.names!r}'


# Logical axes of the library's layers:
#   'vocab' token ids' tables and logits   'embed' d_model      'mlp' the feed-forward width
#   'heads' attention heads (or heads·d_head merged)  'kv' d_head   'modules' S of the
#   multiplicative layers   'lowrank' SparseFF's controller rank   'block' units of a block
#   'length' positions     None: small axes (convolution taps, gates) never split.
DEFAULT_RULES: dict[str, str | None] = {'mlp': 'model', 'heads': 'model', 'vocab': 'model'}
DATA_AXIS, MODEL_AXIS = 'data', 'model'


def check_mesh_shape(mesh_shape: Mapping[str, int], n_devices: int | None = None
                     ) -> dict[str, int]:
    """`mesh_shape` as a dict of positive ints with a 'data' axis (checked against n_devices)."""
    if not isinstance(mesh_shape, Mapping) or not mesh_shape:
        raise ValueError(f"mesh_shape must be a dict of axis names and sizes, e.g. "
                         f"{{'data': 2, 'model': 4}}; got {mesh_shape!r}")
    shape = {}
    for name, size in mesh_shape.items():
        if not isinstance(name, str) or isinstance(size, bool) or \
                not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f'mesh_shape: axis {name!r} must be a name with a positive '
                             f'integer size, got {size!r}')
        shape[name] = int(size)
    if DATA_AXIS not in shape:
        raise ValueError(f"mesh_shape {shape} needs a '{DATA_AXIS}' axis (the batch is split "
                         f"over it; give it size 1 for pure tensor parallelism)")
    total = int(np.prod(list(shape.values())))
    if n_devices is not None and total != n_devices:
        raise ValueError(f'mesh_shape {shape} has {total} devices, but {n_devices} are in use '
                         f'(the product of the sizes must equal the number of devices)')
    return shape


def partition_spec(axes: Axes, signature: Any, mesh_shape: Mapping[str, int],
                   rules: Mapping[str, str | None] | None = None,
                   fsdp: bool = False) -> tuple:
    """The mesh axis (or None) of each dimension of one weight.

    A logical axis goes to the mesh axis its rule names when that mesh axis is
    larger than 1, divides the dimension, and is not used by another dimension.
    With `fsdp`, 'data' (then each mesh axis still unused, e.g. 'model' for a
    weight without a tensor-parallel axis) goes to the largest dimension still
    unsplit that it divides: every device then holds about 1/n of each weight.
    """
    rules = DEFAULT_RULES if rules is None else rules
    shape = tuple(signature.shape)
    if len(axes.names) != len(shape):
        raise ValueError(f'{axes!r} names {len(axes.names)} axes for a weight of shape '
                         f'{shape}')
    spec: list = [None] * len(shape)
    used = set()
    for i, (name, size) in enumerate(zip(axes.names, shape)):
        target = rules.get(name) if name is not None else None
        if _fits(target, size, mesh_shape, used):
            spec[i] = target
            used.add(target)
    if fsdp:      # 'data' first, then any mesh axis no rule used: largest free dimension
        for target in [DATA_AXIS] + [a for a in mesh_shape if a != DATA_AXIS]:
            free = [i for i, s in enumerate(spec) if s is None
                    and _fits(target, shape[i], mesh_shape, used)]
            if free:
                spec[max(free, key=lambda i: shape[i])] = target
                used.add(target)
    return tuple(spec)


def _fits(target: str | None, size: int, mesh_shape: Mapping[str, int], used: set) -> bool:
    return (target is not None and target not in used and mesh_shape.get(target, 1) > 1
            and size % mesh_shape[target] == 0)


def partition_specs(axes_tree: Any, weights_signature: Any, mesh_shape: Mapping[str, int],
                    rules: Mapping[str, str | None] | None = None, fsdp: bool = False,
                    where: str = 'model') -> Any:
    """A `Spec` (`partition_spec`) for every weight of a tree (`axes_tree`: Layer.weight_axes())."""
    leaves = tree_leaves(axes_tree)
    if not all(isinstance(a, Axes) for a in leaves) or \
            tree_structure(axes_tree) != tree_structure(weights_signature):
        raise ValueError(f'{where}: weight_axes() does not match the weights tree (a layer '
                         f'that creates weights must name their axes: Layer.weight_axes)')
    return tree_map(lambda a, sig: Spec(*partition_spec(a, sig, mesh_shape, rules, fsdp)),
                    axes_tree, weights_signature)


def replicated_specs(signature_tree: Any) -> Any:
    """A Spec that splits nothing for every array of a tree (containers kept)."""
    return specs_like(signature_tree, None, None)


def specs_like(tree: Any, weights_signature: Any, weight_specs: Any) -> Any:
    """Specs for a tree that holds copies of the weights tree (an optimizer state: Adam's mu
    and nu): each such copy is split like the weights, every other array is replicated.
    Containers keep their types (named tuples too), so the result fits jit's shardings."""
    if weights_signature is not None and _same_arrays(tree, weights_signature):
        return weight_specs
    if isinstance(tree, dict):
        return type(tree)((k, specs_like(v, weights_signature, weight_specs))
                          for k, v in tree.items())
    if isinstance(tree, (tuple, list)):
        children = [specs_like(c, weights_signature, weight_specs) for c in tree]
        return type(tree)(*children) if hasattr(tree, '_fields') else type(tree)(children)
    if tree is None:
        return None
    return Spec(*[None] * len(tree.shape))


def _same_arrays(a: Any, b: Any) -> bool:
    if tree_structure(a) != tree_structure(b) or not tree_leaves(b):
        return False
    return all(tuple(x.shape) == tuple(y.shape) for x, y in zip(tree_leaves(a), tree_leaves(b)))


def bytes_per_device(signature_tree: Any, spec_tree: Any, mesh_shape: Mapping[str, int]
                     ) -> int:
    """Bytes of one shard of each array of a tree, summed: what one device holds."""
    total = 0
    for sig, spec in zip(tree_leaves(signature_tree), tree_leaves(spec_tree)):
        split = int(np.prod([mesh_shape[a] for a in spec.names if a is not None],
                            dtype=np.int64))
        total += int(np.prod(sig.shape, dtype=np.int64)) * np.dtype(sig.dtype).itemsize // split
    return total


def rules_from(axis_rules: Mapping[str, str | None] | Sequence | None) -> dict:
    """Rules as a dict; accepts a dict or pairs ((logical, mesh axis or None), ...)."""
    if axis_rules is None:
        return dict(DEFAULT_RULES)
    pairs = axis_rules.items() if isinstance(axis_rules, Mapping) else axis_rules
    rules = {}
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str) or \
                not (pair[1] is None or isinstance(pair[1], str)):
            raise ValueError(f'axis_rules: each rule maps a logical axis name to a mesh axis '
                             f'name or None, got {pair!r}')
        rules[pair[0]] = pair[1]
    return rules


__all__ = ['Axes', 'DATA_AXIS', 'DEFAULT_RULES', 'MODEL_AXIS', 'Spec', 'bytes_per_device',
           'check_mesh_shape', 'partition_spec', 'partition_specs', 'replicated_specs',
           'rules_from', 'specs_like']
