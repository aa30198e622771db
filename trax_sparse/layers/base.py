"""The Layer contract: data-stack arity, weights/state trees, pure_fn, init.

A layer takes `n_in` items from the data stack and returns `n_out` items (one
item is an array, several a tuple). `weights` and `state` are nested tuples
whose structure does not depend on `mode`. `pure_fn(x, weights, state, rng)`
is the canonical, jit-safe call; `__call__` is a convenience that keeps state.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> from trax_sparse.layers import Fn
    >>> double = Fn('Double', lambda x: 2 * x)
    >>> with fastmath.use_backend('numpy'):
    ...     print(double(np.array([1.0, 2.0])))
    [2. 4.]
"""
import inspect
from typing import Any, Callable, Iterator, Sequence


from trax_sparse import fastmath, shapes
from trax_sparse.fastmath import tree_map
from trax_sparse.layers.call_context import (PredictUse, is_replaying,
                                             note_predict_use, recording_predict_use,
                                             replay_context)
from trax_sparse.layers.hooks import TreeHooks, split_rngs
from trax_sparse.layers.plan import init_plan, run_plan
from trax_sparse.layers.errors import (MODES, ErrorContext, LayerError,
                                       SublayerContext, check_mode, check_positive_int,
                                       check_rate, creation_site)


class _SharedTree:
    """`layer.weights` and `layer.state`: kept in `_weights` / `_state`.

    Set outside a call, the tree is also handed down, entry i to sublayer i, so
    `model.sublayers[i].weights` reads well; inside a call (`_call_depth` > 0)
    only the layer's own attribute changes.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._name, self._slot = name, '_' + name

    def __get__(self, layer: Any, owner: type | None = None) -> Any:
        return self if layer is None else getattr(layer, self._slot)

    def __set__(self, layer: Any, value: Any) -> None:
        setattr(layer, self._slot, value)
        if layer._call_depth == 0:
            layer._distribute(self._name, value)


class Layer(TreeHooks):
    """Base class: override `forward` and, for layers with weights, `init_weights_and_state`.

    Inside `forward` read `self.weights`, `self.state` and `self.rng`; assign
    `self.state` to return a new state.
    """

    def __init__(self, n_in: int = 1, n_out: int = 1, name: str | None = None,
                 sublayers: Sequence['Layer'] = ()):
        self._n_in, self._n_out = int(n_in), int(n_out)
        self._name = name or type(self).__name__
        self._sublayers = tuple(sublayers)
        self._weights: Any = None  # None: not initialized yet.
        self._state: Any = None
        self._rng: Any = None
        self._call_depth = 0
        self._created_at = creation_site()
        self._uses_rng: bool | None = None
        # What `init` was last given and made (for state_signature without re-running init).
        self._init_signature: Any = None
        self._init_state_signature: Any = None

    # ---- arity and identity -------------------------------------------------
    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def name(self) -> str:
        return self._name

    @property
    def sublayers(self) -> tuple['Layer', ...]:
        return self._sublayers

    # ---- weights, state, rng -------------------------------------------------
    weights = _SharedTree()
    state = _SharedTree()

    @property
    def rng(self) -> Any:
        return self._rng

    @rng.setter
    def rng(self, rng: Any) -> None:
        self._rng = rng

    # ---- to override ---------------------------------------------------------
    def plan(self) -> tuple | None:
        """This layer's data flow as steps on its data stack (`layers.plan`), or None.

        A combinator returns its plan (Call a sublayer, Permute, Accumulate) and
        defines neither `forward` nor `init_weights_and_state`: the one interpreter
        runs it under `pure_fn`, inits it, and inlines it in the compiled NumPy step.
        Layers with their own array code (or their own gradient) return None.
        """
        return None

    def forward(self, inputs: Any) -> Any:
        """The layer's computation; the default runs its plan."""
        if self.plan() is None:
            raise TypeError(f'{type(self).__name__} defines neither forward(inputs) nor plan()')
        y, self.state = run_plan(self, inputs, self.weights, self.state, self.rng)
        return y

    def init_weights_and_state(self, input_signature: Any) -> None:
        """Sets self.weights and self.state from the input signature (default: those of its
        plan's sublayers, else none)."""
        if self.plan() is None:
            self.weights, self.state = (), ()
        else:
            self.weights, self.state = init_plan(self, input_signature, self.rng)

    def backward(self, inputs: Any, output: Any, grad: Any, weights: Any, state: Any,
                 new_state: Any, rng: Any) -> tuple[Any, Any]:
        """Custom gradient: returns (inputs_grad, weights_grad). Used iff has_backward."""
        raise TypeError(f'{self.name} sets has_backward but defines no backward()')

    # ---- public entry points -------------------------------------------------
    def init(self, input_signature: Any, rng: Any = None) -> tuple[Any, Any]:
        """Initializes weights and state for inputs of `input_signature`; returns both.

        Like Trax, this also sets `self.weights` / `self.state` (and those of every
        sublayer). `pure_init` gives the same values without touching the layer.
        """
        input_signature = shapes.signature(input_signature)
        self._rng = fastmath.random.get_prng(0) if rng is None else rng
        with self._error_context(input_signature):
            self._check_n_items(input_signature)
            self.init_weights_and_state(input_signature)
        if all(fastmath.is_concrete(leaf) for leaf in fastmath.tree_leaves(self._state)):
            self._init_signature = input_signature
            self._init_state_signature = tree_map(shapes.signature, self._state)
        return self.weights, self.state

    def pure_init(self, input_signature: Any, rng: Any = None) -> tuple[Any, Any]:
        """(weights, state) for inputs of `input_signature`; the layer is left as it was.

        Side-effect free, so it may run under jit or `fastmath.abstract_eval`
        (no traced value is left behind on any layer).
        """
        saved = self._snapshot()
        try:
            return self.init(input_signature, rng)
        finally:
            self._restore(saved)

    def weights_signature(self, input_signature: Any) -> Any:
        """The weights tree as ShapeDtypes (no weights allocated on JAX); no side effects."""
        input_signature = shapes.signature(input_signature)
        return fastmath.abstract_eval(lambda: self.pure_init(input_signature)[0])()

    def state_signature(self, input_signature: Any) -> Any:
        """The initial state tree as ShapeDtypes for inputs of `input_signature`; no side effects.

        Free when the layer was initialized with this signature; otherwise an
        abstract `pure_init` (eval_shape on JAX: nothing is computed).
        """
        input_signature = shapes.signature(input_signature)
        if (self._init_signature is not None
                and _same_signature(self._init_signature, input_signature)):
            return self._init_state_signature
        return fastmath.abstract_eval(lambda: self.pure_init(input_signature)[1])()

    def pure_fn(self, x: Any, weights: Any, state: Any, rng: Any = None) -> tuple[Any, Any]:
        """Runs the layer without side effects: returns (outputs, new_state)."""
        if weights is None or state is None:
            raise LayerError(self.name, 'weights or state is None: call layer.init(input '
                             'signature) first, or pass the weights and state', None,
                             self._created_at)
        if rng is None:
            rng = self._rng if self._rng is not None else fastmath.random.get_prng(0)
        if self.has_backward and fastmath.is_jax():
            return self._pure_fn_custom_grad(x, weights, state, rng)
        return self._pure_fn_plain(x, weights, state, rng)

    def __call__(self, x: Any, weights: Any = None, state: Any = None, rng: Any = None) -> Any:
        """Convenience call: initializes on first use and keeps the new state."""
        if self._weights is None and weights is None:
            self.init(shapes.signature(x), rng=rng)
        weights = self.weights if weights is None else weights
        state = self.state if state is None else state
        y, new_state = self.pure_fn(x, weights, state, rng)
        self.state = new_state
        return y

    def output_signature(self, input_signature: Any) -> Any:
        """Shapes/dtypes of the outputs for inputs of `input_signature` (no real compute on JAX)."""
        input_signature = shapes.signature(input_signature)
        rng = self._rng if self._rng is not None else fastmath.random.get_prng(0)
        if self._weights is not None:
            return self.abstract_forward(input_signature, self._weights, self._state, rng)

        def init_and_run(x):
            w, s = self.pure_init(input_signature, rng)
            return self.pure_fn(x, w, s, rng)[0]
        return fastmath.abstract_eval(init_and_run)(input_signature)

    def abstract_forward(self, input_signature: Any, weights: Any, state: Any, rng: Any) -> Any:
        """Output signature with the given weights (eval_shape on JAX, zeros on NumPy).

        The state goes in by its signature, so a predict-mode layer that writes
        its caches in place (NumPy) never writes into the `state` given here.
        """
        state_signature = tree_map(shapes.signature, state)
        return fastmath.abstract_eval(lambda x, s: self.pure_fn(x, weights, s, rng)[0])(
            input_signature, state_signature)

    # ---- internals -----------------------------------------------------------
    def _pure_fn_plain(self, x: Any, weights: Any, state: Any, rng: Any) -> tuple[Any, Any]:
        saved = (self._weights, self._state, self._rng)
        self._weights, self._state, self._rng = weights, state, rng
        self._call_depth += 1
        try:
            with self._error_context(x):
                self._check_n_items(x)
                y = self.forward(x)
            return y, self._state
        finally:
            self._call_depth -= 1
            self._weights, self._state, self._rng = saved

    def _pure_fn_custom_grad(self, x: Any, weights: Any, state: Any, rng: Any):
        jax_backend = fastmath.backend()

        @jax_backend.custom_vjp
        def run(x, w, s, r):
            return self._pure_fn_plain(x, w, s, r)

        def run_fwd(x, w, s, r):
            y, new_s = self._pure_fn_plain(x, w, s, r)
            return (y, new_s), (x, w, s, r, y, new_s)

        def run_bwd(residual, cotangent):
            x, w, s, r, y, new_s = residual
            x_ct, w_ct = self.backward(x, y, cotangent[0], w, s, new_s, r)
            zero = jax_backend.zero_cotangent
            return x_ct, w_ct, tree_map(zero, s), zero(r)

        run.defvjp(run_fwd, run_bwd)
        return run(x, weights, state, rng)

    def forward_unchecked(self, x: Any, weights: Any, state: Any, rng: Any) -> tuple[Any, Any]:
        """(outputs, new_state) of `forward` alone: no checks, no error context, no custom
        gradient. For engines that checked the tree once (the compiled NumPy step)."""
        saved = self._weights, self._state, self._rng
        self._weights, self._state, self._rng = weights, state, rng
        try:
            return self.forward(x), self._state
        finally:
            self._weights, self._state, self._rng = saved

    @property
    def stateless_fn(self) -> Callable | None:
        """A function of the inputs alone that equals `forward` (no weights, state or rng),
        or None. Engines may call it directly."""
        return None

    @property
    def created_at(self) -> str:
        """file:line where the layer was constructed (named in its errors)."""
        return self._created_at

    def _check_n_items(self, x: Any) -> None:
        if self._n_in == 1:
            return
        n_given = len(x) if isinstance(x, (tuple, list)) else 1
        if n_given != self._n_in:
            raise ValueError(f'expected {self._n_in} inputs (n_in={self._n_in}) from the data '
                             f'stack, got {n_given}')

    def _error_context(self, inputs: Any) -> ErrorContext:
        """Turns an exception inside into a LayerError naming this layer and its inputs."""
        return ErrorContext(self, inputs)

    def sublayer_context(self, index: int) -> SublayerContext:
        """Prefixes `Name[index]/` to the path of errors raised by sublayer `index`."""
        return SublayerContext(self, index)

    def _walk(self) -> Iterator['Layer']:
        yield self
        for sub in self._sublayers:
            yield from sub._walk()

    def _snapshot(self) -> list:
        return [(layer, layer._weights, layer._state, layer._rng) for layer in self._walk()]

    @staticmethod
    def _restore(snapshot: list) -> None:
        for layer, w, s, r in snapshot:
            layer._weights, layer._state, layer._rng = w, s, r

    def __repr__(self) -> str:
        return self._repr(0)

    def _repr(self, indent: int) -> str:
        head = f'{self.name}_in{self.n_in}_out{self.n_out}'
        if not self._sublayers:
            return ' ' * indent + head
        inner = '\n'.join(sub._repr(indent + 2) for sub in self._sublayers)
        return ' ' * indent + head + '[\n' + inner + '\n' + ' ' * indent + ']'


class PureLayer(Layer):
    """A layer without weights computed by `fn(*inputs)`."""

    def __init__(self, fn: Callable, n_in: int, n_out: int = 1, name: str | None = None):
        super().__init__(n_in=n_in, n_out=n_out, name=name or fn.__name__)
        self._fn = fn

    def draws_random_numbers(self) -> bool:
        return False

    @property
    def stateless_fn(self) -> Callable | None:
        return self._fn              # (a subclass that changes forward must override this)

    def forward(self, inputs: Any) -> Any:
        args = inputs if self.n_in > 1 else (inputs,)
        if self.n_in == 0:
            args = ()
        out = self._fn(*args)
        if self.n_out > 1 and (not isinstance(out, (tuple, list)) or len(out) != self.n_out):
            raise ValueError(f'function returned {type(out).__name__}, expected a tuple of '
                             f'{self.n_out} arrays (n_out={self.n_out})')
        return tuple(out) if self.n_out > 1 else out


def Fn(name: str, fn: Callable, n_out: int = 1) -> Layer:  # noqa: N802 - Trax style.
    """A weightless layer from a function; n_in is the function's number of arguments.

    Example:
        >>> add = Fn('Add', lambda a, b: a + b)
        >>> (add.n_in, add.n_out)
        (2, 1)
    """
    parameters = inspect.signature(fn).parameters.values()
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            raise ValueError(f'Fn {name!r}: the function must take only plain positional '
                             f'arguments (no defaults, *args or **kwargs); got {p}')
    return PureLayer(fn, n_in=len(parameters), n_out=n_out, name=name)


def _same_signature(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = fastmath.tree_leaves(a), fastmath.tree_leaves(b)
    return (fastmath.tree_structure(a) == fastmath.tree_structure(b)
            and all(x.shape == y.shape and x.dtype == y.dtype
                    for x, y in zip(leaves_a, leaves_b)))


def weights_signature(layer: Layer, input_signature: Any) -> Any:
    """The weights tree as ShapeDtypes, without allocating weights on JAX (eval_shape).

    Example:
        >>> from trax_sparse import shapes
        >>> from trax_sparse.layers import Dense
        >>> weights_signature(Dense(3), shapes.ShapeDtype((1, 4)))
        (ShapeDtype{shape:(4, 3), dtype:float32}, ShapeDtype{shape:(3,), dtype:float32})
    """
    return layer.weights_signature(input_signature)


def count_params(layer: Layer, input_signature: Any) -> int:
    """Number of weights (scalars) of `layer` for inputs of `input_signature`."""
    return sum(sig.size for sig in fastmath.tree_leaves(weights_signature(layer, input_signature)))


# The layer API in one place: what layers import from here (some of it defined in
# errors.py, call_context.py and hooks.py).
__all__ = ['MODES', 'Fn', 'Layer', 'LayerError', 'PredictUse', 'PureLayer', 'check_mode',
           'check_positive_int', 'check_rate', 'count_params', 'is_replaying', 'note_predict_use',
           'recording_predict_use', 'replay_context', 'split_rngs', 'weights_signature']
