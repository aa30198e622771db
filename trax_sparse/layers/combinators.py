"""Combinators: build layers out of layers by moving items on the data stack.

The data stack is a tuple whose first item is the top. A layer pops its
`n_in` items and pushes its `n_out` outputs.

Example:
    >>> from trax_sparse import layers as tl
    >>> block = tl.Serial(tl.Dense(8), tl.Relu(), tl.Dense(4))
    >>> (block.n_in, block.n_out)
    (1, 1)
    >>> tl.Branch(tl.Relu(), None).n_out
    2
"""
from typing import Any, Sequence

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.fastmath import tree_map
from trax_sparse.layers import plan
from trax_sparse.layers.base import Layer, check_mode
from trax_sparse.layers.core import Add
from trax_sparse.layers.stack import from_stack, to_stack


def _flatten(layers: Sequence[Any]) -> list[Layer]:
    flat = []
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, (list, tuple)):
            flat.extend(_flatten(layer))
        elif isinstance(layer, Layer):
            flat.append(layer)
        else:
            raise TypeError(f'expected a Layer (or a list of layers), got {type(layer).__name__}')
    return flat


def _serial_arity(layers: Sequence[Layer]) -> tuple[int, int]:
    if not layers:
        return 1, 1
    running, needed = 0, 0
    for layer in layers:
        running -= layer.n_in
        needed = max(needed, -running)
        running += layer.n_out
    return needed, needed + running


class Serial(Layer):
    """Runs sublayers one after another on the data stack."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, *layers: Any, name: str | None = None):
        layers = _flatten(layers)
        n_in, n_out = _serial_arity(layers)
        super().__init__(n_in=n_in, n_out=n_out, name=name or 'Serial', sublayers=layers)
        self._plan = plan.serial(len(layers))

    def plan(self) -> tuple:
        return self._plan


class Parallel(Layer):
    """Applies sublayer i to the i-th consecutive span of inputs (None = identity)."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, *layers: Any, name: str | None = None):
        layers = [Serial() if layer is None or layer == [] else
                  (Serial(layer) if isinstance(layer, (list, tuple)) else layer)
                  for layer in layers]
        super().__init__(n_in=sum(l.n_in for l in layers), n_out=sum(l.n_out for l in layers),
                         name=name or 'Parallel', sublayers=layers)
        starts = [sum(l.n_in for l in layers[:i]) for i in range(len(layers))]
        self._plan = plan.side_by_side([range(start, start + l.n_in)
                                        for start, l in zip(starts, layers)],
                                       self.n_in, [l.n_out for l in layers])

    def plan(self) -> tuple:
        return self._plan


class Branch(Parallel):
    """Gives each sublayer a copy of the top inputs it needs; concatenates outputs."""

    def __init__(self, *layers: Any, name: str | None = None):
        super().__init__(*layers, name=name or 'Branch')
        self._n_in = max([l.n_in for l in self.sublayers] + [1])
        self._plan = plan.side_by_side([range(l.n_in) for l in self.sublayers], self.n_in,
                                       [l.n_out for l in self.sublayers])


class Select(Layer):
    """Pops `n_in` items and pushes `[stack[i] for i in indices]`.

    Example:
        >>> Select([0, 0, 1]).n_in, Select([0, 0, 1]).n_out
        (2, 3)
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, indices: Sequence[int], n_in: int | None = None, name: str | None = None):
        indices = [int(i) for i in indices]
        n_in = (max(indices) + 1 if indices else 1) if n_in is None else n_in
        if any(i < 0 or i >= n_in for i in indices):
            raise ValueError(f'Select: indices {indices} must lie in [0, n_in={n_in})')
        super().__init__(n_in=n_in, n_out=len(indices), name=name or f'Select{indices}')
        self._plan = plan.select(indices, n_in)

    def plan(self) -> tuple:
        return self._plan


def Dup() -> Layer:  # noqa: N802
    """Duplicates the top item: x -> (x, x)."""
    return Select([0, 0], name='Dup')


def Swap() -> Layer:  # noqa: N802
    """Swaps the top two items: (a, b) -> (b, a)."""
    return Select([1, 0], name='Swap')


def Drop() -> Layer:  # noqa: N802
    """Removes the top item."""
    return Select([], n_in=1, name='Drop')


def Residual(*layers: Any, shortcut: Layer | None = None) -> Layer:  # noqa: N802
    """x -> shortcut(x) + layers(x) (shortcut defaults to the identity)."""
    return Serial(Branch(shortcut, Serial(layers)), Add(), name='Residual')


class Scan(Layer):
    """Scans `layer` along `axis`: layer maps (x_slices..., carry...) -> (ys..., carry...).

    The last `n_carry` inputs are the initial carries; the rng is folded with the
    step index. In predict mode the final carry is kept in state and used as
    the carry of the next call.
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, layer: Layer, axis: int = 0, n_carry: int = 1, remat: bool = False,
                 mode: str = 'train'):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name='Scan', sublayers=[layer])
        if n_carry > min(layer.n_in, layer.n_out):
            raise ValueError(f'Scan: n_carry={n_carry} exceeds n_in/n_out of {layer.name}')
        self._axis, self._n_carry, self._remat = axis, n_carry, remat
        self._mode = check_mode(mode, 'Scan')

    def _split(self, xs: Any) -> tuple[list, list]:
        stack = to_stack(xs, self.n_in)
        n_xs = self.n_in - self._n_carry
        return stack[:n_xs], stack[n_xs:]

    def init_weights_and_state(self, input_signature: Any) -> None:
        xs, carry = self._split(input_signature)
        step_sig = [x.replace(shape=x.shape[:self._axis] + x.shape[self._axis + 1:]) for x in xs]
        with self.sublayer_context(0):
            w, s = self.sublayers[0].init(from_stack(step_sig + carry, self.n_in), self.rng)
        self.weights = (w,)
        if self._mode == 'predict':
            saved = tuple(xnp.zeros(c.shape, c.dtype) for c in carry)
            self.state = (s, saved, xnp.zeros((), xnp.int32))
        else:
            self.state = (s,)

    def forward(self, xs_and_carry: Any) -> Any:
        layer, (w,) = self.sublayers[0], self.weights
        xs, carry = self._split(xs_and_carry)
        if self._mode == 'predict':
            sub_state, saved, started = self.state
            carry = [xnp.where(started > 0, c_saved, c) for c_saved, c in zip(saved, carry)]
        else:
            sub_state = self.state[0]
        xs = [xnp.moveaxis(x, self._axis, 0) for x in xs]
        length = xs[0].shape[0]
        n_ys = self.n_out - self._n_carry

        def step(carry_and_state, x_and_index):
            c, st = carry_and_state
            x, i = x_and_index
            rng = fastmath.random.fold_in(self.rng, i)
            with self.sublayer_context(0):
                out, st = layer.pure_fn(from_stack(list(x) + list(c), self.n_in), w, st, rng)
            out = to_stack(out, self.n_out)
            return (tuple(out[n_ys:]), st), tuple(out[:n_ys])

        step_fn = fastmath.remat(step) if self._remat else step
        (carry, sub_state), ys = fastmath.scan(
            step_fn, (tuple(carry), sub_state), (tuple(xs), xnp.arange(length)), length=length)
        ys = [xnp.moveaxis(y, 0, self._axis) for y in (ys or ())]
        if self._mode == 'predict':
            self.state = (sub_state, tuple(carry), xnp.ones((), xnp.int32))
        else:
            self.state = (sub_state,)
        return from_stack(ys + list(carry), self.n_out)


class _WeightTransparent(Layer):
    """A wrapper whose weights ARE its single sublayer's weights (not a 1-tuple of them).

    So wrapping a layer (e.g. in predict mode only) never changes the weights
    tree: weights trained without the wrapper load unchanged. State is
    (sublayer state, *wrapper state).
    """

    def draws_random_numbers(self) -> bool:
        return False

    @property
    def shares_child_weights(self) -> bool:
        return True


class Chunk(_WeightTransparent):
    """Runs `layer` on chunks of `chunk_size` along the leading axis (rematerialized).

    Inputs whose leading axis is not a multiple of `chunk_size` pass unchunked.
    """

    def __init__(self, layer: Layer, chunk_size: int):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name=f'Chunk_{chunk_size}',
                         sublayers=[layer])
        self._chunk_size = int(chunk_size)

    def init_weights_and_state(self, input_signature: Any) -> None:
        with self.sublayer_context(0):
            w, s = self.sublayers[0].init(input_signature, self.rng)
        self.weights, self.state = w, (s,)

    def forward(self, xs: Any) -> Any:
        layer, w, (s,) = self.sublayers[0], self.weights, self.state
        items = to_stack(xs, self.n_in)
        batch = items[0].shape[0]
        c = self._chunk_size
        if c <= 0 or batch <= c or batch % c:
            with self.sublayer_context(0):
                out, s = layer.pure_fn(xs, w, s, self.rng)
            self.state = (s,)
            return out
        chunked = [x.reshape((batch // c, c) + x.shape[1:]) for x in items]

        def step(st, chunk_and_index):
            chunk, i = chunk_and_index
            with self.sublayer_context(0):
                out, st = layer.pure_fn(from_stack(list(chunk), self.n_in), w, st,
                                        fastmath.random.fold_in(self.rng, i))
            return st, tuple(to_stack(out, self.n_out))

        s, outs = fastmath.scan(fastmath.remat(step), s,
                                (tuple(chunked), xnp.arange(batch // c)), length=batch // c)
        self.state = (s,)
        outs = [o.reshape((batch,) + o.shape[2:]) for o in outs]
        return from_stack(outs, self.n_out)


def is_empty_call(xs: Any, n_in: int) -> bool:
    """True when the first input has length 0 along axis 1 (e.g. encoder ids [B, 0])."""
    first = to_stack(xs, n_in)[0]
    return len(first.shape) >= 2 and first.shape[1] == 0


class Cache(_WeightTransparent):
    """Runs `layer` on a non-empty input and stores its outputs; an EMPTY input returns them.

    An input is empty when the first input has length 0 along axis 1 (e.g.
    encoder token ids [B, 0]). This is static (a shape), so the first call and
    the later ones both run under jit: decoding passes the encoder inputs on
    the first predict call and an empty array afterwards. Its weights are the
    layer's own, so a model that caches its encoder only in predict mode keeps
    the same weights tree in every mode. State: (layer state, stored outputs).

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath, shapes
        >>> from trax_sparse.layers import Dense
        >>> cache = Cache(Dense(2))
        >>> with fastmath.use_backend('numpy'):
        ...     w, s = cache.init(shapes.ShapeDtype((1, 3, 4)))
        ...     y, s = cache.pure_fn(np.ones((1, 3, 4), np.float32), w, s)
        ...     again, s = cache.pure_fn(np.ones((1, 0, 4), np.float32), w, s)
        >>> bool((y == again).all())
        True
    """

    def __init__(self, layer: Layer):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name='Cache', sublayers=[layer])

    def bytes_read_per_step(self, weights: Any) -> int:
        return 0                    # after the first call a step reads the stored outputs only

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        return 0

    def init_weights_and_state(self, input_signature: Any) -> None:
        layer = self.sublayers[0]
        with self.sublayer_context(0):
            w, s = layer.init(input_signature, self.rng)
            out_sig = layer.abstract_forward(input_signature, w, s, self.rng)
        empty = tree_map(lambda sig: xnp.zeros(sig.shape, sig.dtype), out_sig)
        self.weights = w
        self.state = (s, empty)

    def forward(self, xs: Any) -> Any:
        layer, w = self.sublayers[0], self.weights
        sub_state, stored = self.state
        if is_empty_call(xs, self.n_in):
            return stored
        with self.sublayer_context(0):
            out, sub_state = layer.pure_fn(xs, w, sub_state, self.rng)
        self.state = (sub_state, out)
        return out


__all__ = ['Branch', 'Cache', 'Chunk', 'Drop', 'Dup', 'Parallel', 'Residual', 'Scan', 'Select',
           'Serial', 'Swap', 'is_empty_call']
