"""A layer's forward compiled once into a flat program of leaf calls (the NumPy hot path).

`pure_fn` walks the combinator tree on every call: each Serial, Branch and
Parallel splits its weights and state, checks their structure, splits the rng
and wraps each sublayer call. On the NumPy backend, decoding one token of a
24-layer model makes ~500 such calls, milliseconds of pure Python.

`FlatForward(layer)` walks the tree once. The stack-moving combinators (Serial,
Parallel, Branch, Select, ReversibleSelect, ReversibleHalfResidual) become
moves on one data stack; every other layer is one call of its own `forward`
(or, for a `Fn`, of its function). Each leaf runs the same array code as under
`pure_fn`, in the same order, with the same rng (the keys the combinators would
split, derived once per rng), so the results are identical; what goes is the
tree walk, the per-call checks and the weight distribution.

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
from trax_sparse.layers.base import Layer, LayerError, PureLayer
from trax_sparse.layers.combinators import Branch, Parallel, Select, Serial
from trax_sparse.layers.reversible import ReversibleHalfResidual, ReversibleSelect
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

    def child(self, parent: Layer, i: int) -> '_Where':
        split = ((len(parent.sublayers), i),) if parent.uses_rng else ()
        return _Where(self.path + (i,), f'{self.prefix}{parent.name}[{i}]/',
                      self.rng_path + split)


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
        kind = type(layer)
        if isinstance(layer, Serial) and kind.forward is Serial.forward:
            return [self._compile(sub, offset, where.child(layer, i))
                    for i, sub in enumerate(layer.sublayers)]
        if isinstance(layer, Parallel) and kind.forward is Parallel.forward and \
                kind._spans in (Parallel._spans, Branch._spans):
            return self._compile_parallel(layer, offset, where)
        if isinstance(layer, ReversibleHalfResidual) and \
                kind.forward is ReversibleHalfResidual.forward:
            return self._compile_half_residual(layer, offset, where)
        if isinstance(layer, (Select, ReversibleSelect)) and \
                kind.forward in (Select.forward, ReversibleSelect.forward):
            self._ops.append(_select_op(offset, layer.n_in, layer._indices))
        else:
            self._ops.append(_call_op(layer, offset, len(self._paths), self._rng_slot(where),
                                      where.prefix))
            self.n_leaf_calls += 1
        self._paths.append(where.path)
        return len(self._paths) - 1

    def _rng_slot(self, where: _Where) -> int:
        if where.rng_path not in self._rng_paths:
            self._rng_paths.append(where.rng_path)
        return self._rng_paths.index(where.rng_path)

    def _compile_parallel(self, layer: Parallel, offset: int, where: _Where) -> list:
        # Copy each sublayer's inputs into its own span (Branch: the same top items for
        # each), then run sublayer i on span i; outputs end up side by side.
        spans, start = [], 0
        for sub in layer.sublayers:
            first = 0 if isinstance(layer, Branch) else start
            spans += list(range(first, first + sub.n_in))
            start += sub.n_in
        if spans != list(range(layer.n_in)):
            self._ops.append(_select_op(offset, layer.n_in, spans))
        templates, position = [], offset
        for i, sub in enumerate(layer.sublayers):
            templates.append(self._compile(sub, position, where.child(layer, i)))
            position += sub.n_out
        return templates

    def _compile_half_residual(self, layer: ReversibleHalfResidual, offset: int,
                               where: _Where) -> list:
        # [acc, *context] -> [*context, acc, *context] -> [f(context), acc, *context]
        # -> [acc + f(context), *context]; f gets the layer's own key (no split).
        n = layer.n_in
        self._ops.append(_select_op(offset, n, list(range(1, n)) + list(range(n))))
        inner = _Where(where.path + (0,), f'{where.prefix}{layer.name}[0]/', where.rng_path)
        template = self._compile(layer.residual, offset, inner)
        self._ops.append(_accumulate_op(offset))
        return [template]


def _select_op(offset: int, n_in: int, indices: list) -> Op:
    end = offset + n_in

    def select(stack, weights, states, rngs):
        stack[offset:end] = [stack[offset + i] for i in indices]
    return select


def _accumulate_op(offset: int) -> Op:
    def accumulate(stack, weights, states, rngs):
        stack[offset:offset + 2] = [stack[offset + 1] + stack[offset]]
    return accumulate


def _call_op(layer: Layer, offset: int, slot: int, rng_slot: int, prefix: str) -> Op:
    n_in, n_out, end = layer.n_in, layer.n_out, offset + layer.n_in
    if isinstance(layer, PureLayer) and type(layer).forward is PureLayer.forward:
        return _function_op(layer, offset, end, prefix)
    leaf, forward = not layer.sublayers, layer.forward

    def call(stack, weights, states, rngs):
        x = stack[offset] if n_in == 1 else tuple(stack[offset:end])
        try:
            if leaf:
                saved = layer._weights, layer._state, layer._rng
                layer._weights, layer._state, layer._rng = weights[slot], states[slot], \
                    rngs[rng_slot]
                try:
                    y = forward(x)
                    states[slot] = layer._state
                finally:
                    layer._weights, layer._state, layer._rng = saved
            else:                 # a combinator we do not flatten (Scan, Cache, Chunk, ...)
                y, states[slot] = layer.pure_fn(x, weights[slot], states[slot], rngs[rng_slot])
        except Exception as error:
            raise _error(layer, prefix, error, x) from error
        stack[offset:end] = [y] if n_out == 1 else y
    return call


def _function_op(layer: PureLayer, offset: int, end: int, prefix: str) -> Op:
    function, n_out = layer._fn, layer.n_out

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
                      shapes.describe(inputs), layer._created_at)


def _build(template: Any, slots: list) -> Any:
    if isinstance(template, int):
        return slots[template]
    return tuple([_build(t, slots) for t in template])


__all__ = ['FlatForward']
