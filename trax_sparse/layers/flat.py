"""A layer's forward compiled once into a flat program of leaf calls (the NumPy hot path).

`pure_fn` walks the combinator tree on every call: each Serial, Branch and
Parallel splits its weights and state, checks their structure, splits the rng
and wraps each sublayer call. On the NumPy backend, decoding one token of a
24-layer model makes ~500 such calls, milliseconds of pure Python.

`FlatForward(layer)` walks the tree once. A layer with a plan (`Layer.plan()`:
Serial, Parallel, Branch, Select, ReversibleHalfResidual, ...) is inlined: its
Permute and Accumulate steps become moves on one data stack (the same step
objects `pure_fn` runs), its Calls are compiled in turn; every other layer is
one call of its own `forward` (or of its `stateless_fn`). Each leaf runs the
same array code as under `pure_fn`, in the same order, with the same key (the
plans' key rule, `plan.key_split`, derived once per rng), so the results are
identical; what goes is the tree walk, the per-call checks and the weight
distribution.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> model = tl.Serial(tl.Dense(4), tl.Residual(tl.Relu(), tl.Dense(4)))
    >>> x = np.ones((2, 3), np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     weights, state = model.init(shapes.signature(x))
    ...     flat = FlatForward(model)
    ...     y, _ = flat(x, weights, state)
    ...     y_ref, _ = model.pure_fn(x, weights, state)
    >>> bool(np.array_equal(y, y_ref)), flat.n_leaf_calls
    (True, 4)
"""
from typing import Any, Callable, NamedTuple

from trax_sparse import fastmath, shapes
from trax_sparse.layers import plan
from trax_sparse.layers.base import Layer, LayerError
from trax_sparse.layers.stack import from_stack, to_stack

# One step of the program: (stack, weights per slot, states per slot, rngs per rng slot)
# -> None; it rewrites `stack` (a list, top first) and its slot's state in place.
Op = Callable[[list, list, list, list], None]


class _Where(NamedTuple):
    """Where a layer sits: its index path in the weights/state trees, its parents as
    errors name them ('Serial[2]/Branch[0]/'), and its key's splits from the top rng
    ((n, i): the i-th of n keys split from the parent's)."""
    path: tuple = ()
    prefix: str = ''
    rng_path: tuple = ()

    def child(self, parent: Layer, step: plan.Call) -> '_Where':
        split = plan.key_split(parent, step)
        return _Where(self.path + (step.sublayer,),
                      f'{self.prefix}{parent.name}[{step.sublayer}]/',
                      self.rng_path + ((split,) if split else ()))


class FlatForward:
    """`layer.pure_fn` as a flat program (see the module docstring)."""

    def __init__(self, layer: Layer):
        # Not the layer itself: a program may be cached per layer (weakly keyed).
        self._name, self._n_in, self._n_out = layer.name, layer.n_in, layer.n_out
        self._ops: list[Op] = []
        self._paths: list[tuple[int, ...]] = []       # state slot -> weights/state path
        self._rng_paths: list[tuple] = [()]           # rng slot -> splits from the top rng
        self.n_leaf_calls = 0                          # layers called (not stack moves)
        self._state_template = self._compile(layer, 0, _Where())

    # ---- running ---------------------------------------------------------------
    def __call__(self, x: Any, weights: Any, state: Any, rng: Any = None,
                 memo: dict | None = None) -> tuple[Any, Any]:
        """(outputs, new_state), as `layer.pure_fn(x, weights, state, rng)`.

        `memo`: a dict the caller keeps between calls (one per decoding run). With
        it the weights are split into slots once per weights tree, the keys once
        per rng, and a state this program returned last time needs no tree walk.
        """
        memo = {} if memo is None else memo
        rng = fastmath.random.get_prng(0) if rng is None else rng
        if memo.get('weights') is not weights:
            memo['weights'], memo['weight_slots'] = weights, self._gather(weights, 'weights')
        if memo.get('rng') is not rng:
            memo['rng'], memo['rngs'] = rng, self._derive_rngs(rng)
        if memo.get('state') is state and state is not None:
            state_slots = list(memo['state_slots'])
        else:
            state_slots = self._gather(state, 'state')
        stack = to_stack(x, self._n_in)
        weight_slots, rngs = memo['weight_slots'], memo['rngs']
        for op in self._ops:
            op(stack, weight_slots, state_slots, rngs)
        new_state = _build(self._state_template, state_slots)
        memo['state'], memo['state_slots'] = new_state, state_slots
        return from_stack(stack, self._n_out), new_state

    def _gather(self, tree: Any, what: str) -> list:
        slots = []
        for path in self._paths:
            node = tree
            try:
                for i in path:
                    node = node[i]
            except (IndexError, TypeError, KeyError) as error:
                where = ''.join(f'[{i}]' for i in path)
                raise ValueError(f'{self._name}: the {what} tree has no entry {where} for '
                                 f'this model (were they made for another model?)') from error
            slots.append(node)
        return slots

    def _derive_rngs(self, rng: Any) -> list:
        """The key each leaf gets under pure_fn: the combinators' splits, each split once."""
        keys, splits = {(): rng}, {}
        for rng_path in self._rng_paths:
            for depth in range(len(rng_path)):
                parent, (n, i) = rng_path[:depth], rng_path[depth]
                if parent + ((n, i),) not in keys:
                    if parent not in splits:
                        splits[parent] = list(fastmath.random.split(keys[parent], n))
                    keys[parent + ((n, i),)] = splits[parent][i]
        return [keys[rng_path] for rng_path in self._rng_paths]

    # ---- compiling ---------------------------------------------------------------
    def _compile(self, layer: Layer, offset: int, where: _Where) -> Any:
        """Appends `layer`'s ops reading its inputs at stack[offset:]; returns its state
        template (a state slot, or a list of its sublayers' templates)."""
        steps = layer.plan()
        if steps is None:
            self._ops.append(_call_op(layer, offset, len(self._paths), self._rng_slot(where),
                                      where.prefix))
            self.n_leaf_calls += 1
            self._paths.append(where.path)
            return len(self._paths) - 1
        if layer.shares_child_weights:
            raise ValueError(f'{layer.name}: a layer with a plan must keep one weights entry '
                             f'per sublayer (shares_child_weights is for opaque wrappers)')
        templates = [()] * len(layer.sublayers)
        for step in steps:
            if type(step) is plan.Call:
                templates[step.sublayer] = self._compile(
                    layer.sublayers[step.sublayer], offset + step.offset,
                    where.child(layer, step))
            else:
                self._ops.append(_move_op(step, offset))
        return templates

    def _rng_slot(self, where: _Where) -> int:
        if where.rng_path not in self._rng_paths:
            self._rng_paths.append(where.rng_path)
        return self._rng_paths.index(where.rng_path)


def _move_op(step: Any, offset: int) -> Op:
    apply = step.apply

    def move(stack, weights, states, rngs):
        apply(stack, offset)
    return move


def _call_op(layer: Layer, offset: int, slot: int, rng_slot: int, prefix: str) -> Op:
    n_in, n_out, end = layer.n_in, layer.n_out, offset + layer.n_in
    if layer.stateless_fn is not None:
        return _function_op(layer, offset, end, prefix)
    # A leaf runs its forward alone; a layer with sublayers and no plan (Scan, Cache,
    # Chunk, ...) its pure_fn, which checks and splits its own trees.
    run = layer.pure_fn if layer.sublayers else layer.forward_unchecked

    def call(stack, weights, states, rngs):
        x = stack[offset] if n_in == 1 else tuple(stack[offset:end])
        try:
            y, states[slot] = run(x, weights[slot], states[slot], rngs[rng_slot])
        except Exception as error:
            raise _error(layer, prefix, error, x) from error
        stack[offset:end] = [y] if n_out == 1 else y
    return call


def _function_op(layer: Layer, offset: int, end: int, prefix: str) -> Op:
    function, n_out = layer.stateless_fn, layer.n_out

    def call(stack, weights, states, rngs):
        args = stack[offset:end]
        try:
            y = function(*args)
        except Exception as error:
            raise _error(layer, prefix, error, tuple(args)) from error
        stack[offset:end] = [y] if n_out == 1 else y
    return call


def _error(layer: Layer, prefix: str, error: Exception, inputs: Any) -> LayerError:
    """The LayerError pure_fn would raise: it names the layer's path from the top."""
    if isinstance(error, LayerError):     # raised inside a layer run by its own pure_fn
        if prefix:
            error.add_parent(prefix[:-1])
        return error
    return LayerError(prefix + layer.name, f'{type(error).__name__}: {error}',
                      shapes.describe(inputs), layer.created_at)


def _build(template: Any, slots: list) -> Any:
    if isinstance(template, int):
        return slots[template]
    return tuple([_build(t, slots) for t in template])


__all__ = ['FlatForward']
