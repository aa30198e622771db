"""Stack plans: a combinator's data flow as data, and the one interpreter that runs it.

A combinator (Serial, Parallel, Branch, Select, ReversibleHalfResidual, ...)
does not code its own loop. `Layer.plan()` returns a tuple of steps over its
data stack (a list, top first, holding the combinator's `n_in` inputs):

- `Call(i, offset)`: sublayer i takes stack[offset:offset + n_in] and puts its
  n_out outputs there. Its key is the i-th of the keys split from the
  combinator's (when some sublayer draws random numbers), or the combinator's
  own key (`own_key=True`).
- `Permute(offset, indices)`: stack[offset:offset + len(indices)] becomes
  [stack[offset + j] for j in indices] (indices may repeat or drop items).
- `Accumulate(offset)`: [f, acc] at offset becomes [acc + f] (a residual add).

After the last step the combinator's outputs are the top n_out items. Three
readers share these steps, so every combinator's data flow is written once:
`run_plan` (the combinator's forward under `pure_fn`, on both backends),
`init_plan` (its weights and state) and `layers.flat.FlatForward` (the compiled
NumPy decoding step, which inlines the plans of a whole model).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, layers as tl
    >>> branch = tl.Branch(tl.Relu(), None)
    >>> branch.plan()    # doctest: +NORMALIZE_WHITESPACE
    (Permute(offset=0, n_in=1, indices=(0, 0)), Call(sublayer=0, offset=0, own_key=False),
     Call(sublayer=1, offset=1, own_key=False))
    >>> tl.Parallel(tl.Relu(), tl.Relu()).plan()[0]
    Call(sublayer=0, offset=0, own_key=False)
    >>> with fastmath.use_backend('numpy'):
    ...     y = branch(np.array([-1.0, 2.0], np.float32))
    >>> [a.tolist() for a in y]
    [[0.0, 2.0], [-1.0, 2.0]]
"""
from typing import Any, Callable, NamedTuple, Sequence

from trax_sparse import fastmath
from trax_sparse.layers.errors import LayerError
from trax_sparse.layers.stack import from_stack, to_stack


class Call(NamedTuple):
    """Run sublayer `sublayer` on the stack items from `offset`."""
    sublayer: int
    offset: int = 0
    own_key: bool = False      # True: the combinator's own key, not a split one


class Permute(NamedTuple):
    """stack[offset:offset + n] = [stack[offset + j] for j in indices], n = `n_in` items read."""
    offset: int
    n_in: int
    indices: tuple

    def apply(self, stack: list, base: int = 0) -> None:
        start = base + self.offset
        stack[start:start + self.n_in] = [stack[start + j] for j in self.indices]

    def apply_abstract(self, stack: list, resolve: Callable[[Any], Any]) -> None:
        self.apply(stack)                     # moves signatures (computed or not) alike


class Accumulate(NamedTuple):
    """[f, acc, ...] at `offset` -> [acc + f, ...]: a residual add of the item on top."""
    offset: int = 0

    def apply(self, stack: list, base: int = 0) -> None:
        start = base + self.offset
        added, acc = stack[start], stack[start + 1]
        _check_same_shape(acc, added)
        stack[start:start + 2] = [acc + added]

    def apply_abstract(self, stack: list, resolve: Callable[[Any], Any]) -> None:
        start = self.offset
        acc = resolve(stack[start + 1])      # the sum has the accumulator's signature
        _check_same_shape(acc, resolve(stack[start]))
        stack[start:start + 2] = [acc]


def _check_same_shape(acc: Any, added: Any) -> None:
    if tuple(added.shape) != tuple(acc.shape):
        raise ValueError(f'the residual layers must return the accumulator\'s shape '
                         f'{tuple(acc.shape)}, got {tuple(added.shape)}')


Step = Call | Permute | Accumulate


def select(indices: Sequence[int], n_in: int, offset: int = 0) -> tuple:
    """The plan of a Select: one Permute (none when it changes nothing)."""
    indices = tuple(int(i) for i in indices)
    if indices == tuple(range(n_in)):
        return ()
    return (Permute(offset, n_in, indices),)


def serial(n_sublayers: int) -> tuple:
    """Each sublayer in turn on the top of the stack."""
    return tuple(Call(i) for i in range(n_sublayers))


def side_by_side(spans: Sequence[Sequence[int]], n_in: int, n_outs: Sequence[int]) -> tuple:
    """Sublayer i on the stack items `spans[i]`; its outputs side by side (Parallel, Branch).

    First copy each span into place (one Permute), then call sublayer i where
    the outputs of sublayers before it end.
    """
    steps, position = list(select([j for span in spans for j in span], n_in)), 0
    for i, n_out in enumerate(n_outs):
        steps.append(Call(i, position))
        position += n_out
    return tuple(steps)


def key_split(layer: Any, step: Call) -> tuple[int, int] | None:
    """How `step`'s key comes from `layer`'s: (n, i), the i-th of n keys split from it, or
    None, the same key (own_key, or no sublayer of `layer` draws random numbers)."""
    if step.own_key or not layer.uses_rng:
        return None
    return (len(layer.sublayers), step.sublayer)


def check_trees(layer: Any, weights: Sequence, state: Sequence) -> None:
    """A combinator's weights/state must have one entry per sublayer."""
    n = len(layer.sublayers)
    for what, tree in (('weights', weights), ('state', state)):
        if not isinstance(tree, (tuple, list)) or len(tree) != n:
            got = f'{type(tree).__name__} of {len(tree)}' if isinstance(tree, (tuple, list)) \
                else type(tree).__name__
            raise ValueError(f'{layer.name} has {n} sublayers but got {what} with {got} '
                             f'entries (were they made for another model?)')


def run_plan(layer: Any, xs: Any, weights: Any, state: Any, rng: Any) -> tuple[Any, tuple]:
    """(outputs, new state) of `layer`'s plan: each Call is the sublayer's `pure_fn`."""
    sub_weights, sub_states = layer.sublayer_weights(weights), layer.sublayer_states(state)
    if layer.sublayers:
        check_trees(layer, sub_weights, sub_states)
    new_states, split = list(sub_states), None
    stack = to_stack(xs, layer.n_in)
    for step in layer.plan():
        if type(step) is not Call:
            step.apply(stack)
            continue
        i, sub = step.sublayer, layer.sublayers[step.sublayer]
        rule = key_split(layer, step)
        if rule is not None and split is None:
            split = fastmath.random.split(rng, rule[0])
        key = rng if rule is None else split[i]
        start = step.offset
        try:                        # (not `with sublayer_context`: this loop is hot)
            out, new_states[i] = sub.pure_fn(from_stack(stack[start:], sub.n_in),
                                             sub_weights[i], new_states[i], key)
        except LayerError as error:
            error.add_parent(f'{layer.name}[{i}]')
            raise
        stack[start:start + sub.n_in] = to_stack(out, sub.n_out)
    return from_stack(stack, layer.n_out), tuple(new_states)


class _Pending(NamedTuple):
    """Output `index` of a sublayer's init, whose signature is computed only when read."""
    outputs: dict            # {'thunk': callable} -> {'value': stack items}, filled on demand
    index: int

    def resolve(self) -> Any:
        if 'value' not in self.outputs:
            self.outputs['value'] = self.outputs.pop('thunk')()
        return self.outputs['value'][self.index]


def _resolve(item: Any) -> Any:
    return item.resolve() if isinstance(item, _Pending) else item


def init_plan(layer: Any, input_signature: Any, rng: Any) -> tuple[tuple, tuple]:
    """(weights, state) of `layer`'s sublayers, each initialized on the signature its Call
    reads. Init always splits one key per sublayer (own_key: the combinator's key);
    a sublayer's output signature is computed only when a later step reads it."""
    keys = fastmath.random.split(rng, len(layer.sublayers)) if layer.sublayers else []
    weights, states = [None] * len(layer.sublayers), [None] * len(layer.sublayers)
    stack = to_stack(input_signature, layer.n_in)
    for step in layer.plan():
        if type(step) is not Call:
            step.apply_abstract(stack, _resolve)
            continue
        i, sub = step.sublayer, layer.sublayers[step.sublayer]
        start, key = step.offset, (rng if step.own_key else keys[i])
        sig = from_stack([_resolve(item) for item in stack[start:start + sub.n_in]], sub.n_in)
        with layer.sublayer_context(i):
            weights[i], states[i] = sub.init(sig, key)

        def outputs(sub=sub, sig=sig, w=weights[i], s=states[i], key=key, i=i):
            with layer.sublayer_context(i):
                return to_stack(sub.abstract_forward(sig, w, s, key), sub.n_out)
        pending = {'thunk': outputs}
        stack[start:start + sub.n_in] = [_Pending(pending, j) for j in range(sub.n_out)]
    return tuple(weights), tuple(states)


__all__ = ['Accumulate', 'Call', 'Permute', 'Step', 'check_trees', 'init_plan', 'key_split',
           'run_plan', 'select', 'serial', 'side_by_side']
