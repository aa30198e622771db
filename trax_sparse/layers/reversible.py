"""Reversible layers: inputs are reconstructed from outputs, so backward stores no activations.

A `ReversibleLayer` can compute its inputs from its outputs (`reverse`) and
its gradients from its outputs alone (`reverse_and_grad`). `ReversibleSerial`
chains such layers and walks them backwards in its custom gradient: inside it
JAX keeps only the chain's inputs and outputs, so activation memory does not
grow with depth. The RevNet block (docs/architecture.md)

    [ReversibleHalfResidual(F), ReversibleSwap(), ReversibleHalfResidual(G), ReversibleSwap()]

maps (x1, x2) to (y1, y2) with y1 = x1 + F(x2) and y2 = x2 + G(y1).

Recomputes replay the forward exactly: they run with the forward's rng (so
dropout masks match) inside `base.replay_context()` with the state the
forward returned (so LSH buckets and sparse-FF choices are reused).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, layers as tl
    >>> block = ReversibleSerial(ReversibleHalfResidual(tl.Dense(4)), ReversibleSwap())
    >>> x = (np.ones((2, 4), np.float32), np.arange(8, dtype=np.float32).reshape(2, 4))
    >>> with fastmath.use_backend('numpy'):
    ...     w, s = block.init(x)
    ...     y, new_s = block.pure_fn(x, w, s)
    ...     x_again = block.reverse(y, w, s, new_s)
    >>> bool(np.allclose(x_again[0], x[0], atol=1e-5))
    True
"""
from typing import Any, Sequence

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.layers import plan
from trax_sparse.layers.base import Layer, replay_context
from trax_sparse.layers.combinators import Serial
from trax_sparse.layers.stack import from_stack, to_stack


def _add_cotangents(a: Any, b: Any) -> Any:
    """a + b for float cotangents; integer inputs have float0 (zero) cotangents: kept as is."""
    if not onp.issubdtype(onp.dtype(a.dtype), onp.inexact):
        return a
    return a + b


def _recompute_barrier(output: Any, ct: Any, weights: Any, new_state: Any, rng: Any) -> tuple:
    """Keeps a backward recompute from being merged with, or hoisted towards, the forward pass.

    Without it XLA may CSE the recompute with the forward (same weights, rng,
    inputs) and keep the forward's values (e.g. dropout masks, weights
    broadcast to [B, L, d]) alive until the backward, so memory would grow
    with depth again; jax.checkpoint(prevent_cse=True) does the same. Tying in
    the cotangent also makes the recompute wait for the backward to reach it.
    XLA:CPU drops the barrier before scheduling, hoists the recomputes and
    fuses the reconstruction chain across layers; `fastmath.after_cotangent`
    (a conditional on the cotangent) stops both there (docs/RESULTS.md, section 2).
    """
    output, ct, weights, new_state, rng = fastmath.optimization_barrier(
        (output, ct, weights, new_state, rng))
    output, weights, new_state, rng = fastmath.after_cotangent(
        (output, weights, new_state, rng), ct)
    return output, ct, weights, new_state, rng


class ReversibleLayer(Layer):
    """A layer whose inputs can be computed from its outputs.

    Subclasses define `forward` and `reverse`; the custom gradient
    (`backward`, turned into jax.custom_vjp by the base class) calls
    `reverse_and_grad` on the outputs, so it needs no stored activations.
    The default `reverse_and_grad` reverses, then differentiates the forward
    (without the custom gradient) at the reconstructed inputs, replaying the
    forward's discrete choices.

    Example:
        >>> from trax_sparse.fastmath import numpy as xnp
        >>> class Negate(ReversibleLayer):
        ...     def forward(self, x):
        ...         return -x
        ...     def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        ...         return -output
        >>> float(Negate().reverse(xnp.ones(())))
        -1.0
    """

    @property
    def has_backward(self) -> bool:
        return True

    def reverse(self, output: Any, weights: Any = (), state: Any = (), new_state: Any = (),
                rng: Any = None) -> Any:
        """The inputs that `forward` maps to `output` (given the forward's rng and new_state)."""
        raise TypeError(f'{self.name} is a ReversibleLayer but defines no reverse(output, weights, '
                        f'state, new_state, rng)')

    def reverse_and_grad(self, output: Any, ct: Any, weights: Any = (), state: Any = (),
                         new_state: Any = (), rng: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """(reconstructed inputs, (inputs cotangent, weights cotangent)) from outputs and `ct`."""
        output, ct, weights, new_state, rng = _recompute_barrier(
            output, ct, weights, new_state, self._rng_or_default(rng))
        inputs = self.reverse(output, weights, state, new_state, rng)
        with replay_context():
            def run(x, w):
                return self.pure_fn_autodiff(x, w, new_state, rng)[0]
            _, vjp_fn = fastmath.vjp(run, inputs, weights)
        return inputs, vjp_fn(ct)

    def backward(self, inputs: Any, output: Any, grad: Any, weights: Any, state: Any,
                 new_state: Any, rng: Any) -> tuple[Any, Any]:
        del inputs  # Reconstructed from `output`: nothing else is kept from the forward.
        _, (inputs_ct, weights_ct) = self.reverse_and_grad(output, grad, weights, state,
                                                           new_state, rng)
        return inputs_ct, weights_ct

    def pure_fn_autodiff(self, x: Any, weights: Any, state: Any, rng: Any = None
                         ) -> tuple[Any, Any]:
        """`pure_fn` without this layer's custom gradient: JAX differentiates the forward itself.

        It stores activations like any plain layer; use it to build the plain twin
        that the custom gradient must match.
        """
        return self._pure_fn_plain(x, weights, state, self._rng_or_default(rng))

    def _rng_or_default(self, rng: Any) -> Any:
        if rng is not None:
            return rng
        return self.rng if self.rng is not None else fastmath.random.get_prng(0)


class ReversibleSelect(ReversibleLayer):
    """Permutes the top `len(indices)` stack items: output j is input indices[j].

    Every input must appear exactly once (a permutation), so the layer is
    invertible.

    Example:
        >>> ReversibleSelect([2, 0, 1]).reverse((3, 1, 2))
        (1, 2, 3)
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, indices: Sequence[int], name: str | None = None):
        indices = [int(i) for i in indices]
        if sorted(indices) != list(range(len(indices))) or not indices:
            raise ValueError(f'ReversibleSelect: indices must be a permutation of 0..n-1 (every '
                             f'input exactly once, n >= 1), got {indices}')
        super().__init__(n_in=len(indices), n_out=len(indices),
                         name=name or f'ReversibleSelect{indices}')
        self._plan = plan.select(indices, len(indices))
        self._inverse = [indices.index(i) for i in range(len(indices))]

    def plan(self) -> tuple:
        return self._plan

    def reverse(self, output: Any, weights: Any = (), state: Any = (), new_state: Any = (),
                rng: Any = None) -> Any:
        stack = to_stack(output, self.n_out)
        return from_stack([stack[i] for i in self._inverse], self.n_in)

    def reverse_and_grad(self, output: Any, ct: Any, weights: Any = (), state: Any = (),
                         new_state: Any = (), rng: Any = None) -> tuple[Any, tuple[Any, Any]]:
        # A permutation's cotangent is the inverse permutation of the output cotangent.
        return self.reverse(output), (self.reverse(ct), ())


def ReversibleSwap() -> ReversibleSelect:  # noqa: N802 - Trax style.
    """Swaps the top two stack items: (a, b) -> (b, a); its own reverse.

    Example:
        >>> ReversibleSwap().reverse(('b', 'a'))
        ('a', 'b')
    """
    return ReversibleSelect([1, 0], name='ReversibleSwap')


class ReversibleHalfResidual(ReversibleLayer):
    """[acc, *context] -> [acc + f(context), *context], f = Serial(residual_layers).

    n_in = n_out = 1 + f.n_in; f must return one item shaped like acc. The
    reverse is acc = y - f(context): f is recomputed (with the forward's rng,
    replaying its state), never inverted. Weights and state are (f's,).

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath, layers as tl
        >>> half = ReversibleHalfResidual(tl.LayerNorm(), tl.Dense(3))
        >>> (half.n_in, half.n_out)
        (2, 2)
        >>> x = (np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32))
        >>> with fastmath.use_backend('numpy'):
        ...     y = half(x)
        >>> [a.shape for a in y]
        [(2, 3), (2, 3)]
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, *residual_layers: Any, name: str | None = None):
        residual = Serial(residual_layers)
        if residual.n_out != 1:
            raise ValueError(f'ReversibleHalfResidual: the residual layers must return one item '
                             f'(added to the accumulator), they return {residual.n_out} '
                             f'({residual!r})')
        super().__init__(n_in=1 + residual.n_in, n_out=1 + residual.n_in,
                         name=name or 'ReversibleHalfResidual', sublayers=[residual])
        # [acc, *context] -> [*context, acc, *context] -> [f(context), acc, *context]
        # -> [acc + f(context), *context]; f gets this layer's own key (no split).
        n = self.n_in
        self._plan = (plan.Permute(0, n, tuple(range(1, n)) + tuple(range(n))),
                      plan.Call(0, own_key=True), plan.Accumulate(0))

    def plan(self) -> tuple:
        return self._plan

    @property
    def residual(self) -> Layer:
        """f: the Serial of residual layers."""
        return self.sublayers[0]

    def reverse(self, output: Any, weights: Any = (), state: Any = (), new_state: Any = (),
                rng: Any = None) -> Any:
        rng = self._rng_or_default(rng)
        y, context = self._split(output)
        with replay_context(), self.sublayer_context(0):
            residual_out, _ = self.residual.pure_fn(context, weights[0], new_state[0], rng)
        return (y - residual_out,) + self._context_items(context)

    def reverse_and_grad(self, output: Any, ct: Any, weights: Any = (), state: Any = (),
                         new_state: Any = (), rng: Any = None) -> tuple[Any, tuple[Any, Any]]:
        output, ct, weights, new_state, rng = _recompute_barrier(
            output, ct, weights, new_state, self._rng_or_default(rng))
        y, context = self._split(output)
        y_ct, context_ct = self._split(ct)

        def residual_fn(ctx, w):
            return self.residual.pure_fn(ctx, w, new_state[0], rng)[0]

        # Recompute f exactly as in the forward: same rng, the forward's discrete choices.
        with replay_context(), self.sublayer_context(0):
            residual_out, vjp_fn = fastmath.vjp(residual_fn, context, weights[0])
            context_ct_f, weights_ct = vjp_fn(y_ct)
        # y = acc + f(context): d/d acc = y_ct; context gets both paths.
        context_ct = [_add_cotangents(a, b) for a, b in zip(self._context_items(context_ct),
                                                            self._context_items(context_ct_f))]
        inputs = (y - residual_out,) + self._context_items(context)
        return inputs, ((y_ct,) + tuple(context_ct), (weights_ct,))

    # ---- helpers -------------------------------------------------------------
    def _split(self, xs: Any) -> tuple[Any, Any]:
        """[acc, *context] -> (acc, context packed as the residual's input)."""
        items = to_stack(xs, self.n_in)
        return items[0], from_stack(items[1:], self.residual.n_in)

    def _context_items(self, context: Any) -> tuple:
        return tuple(to_stack(context, self.residual.n_in))



class ReversibleSerial(ReversibleLayer, Serial):
    """A Serial of reversible layers whose gradient walks them backwards from the outputs.

    Forward and rng split are Serial's. The custom gradient reconstructs each
    sublayer's inputs from its outputs (last sublayer first), so JAX stores
    only this layer's inputs and outputs, whatever the depth.

    Example:
        >>> from trax_sparse import layers as tl
        >>> block = [ReversibleHalfResidual(tl.LayerNorm(), tl.Dense(8)), ReversibleSwap(),
        ...          ReversibleHalfResidual(tl.Dense(16), tl.Relu(), tl.Dense(8)), ReversibleSwap()]
        >>> stack = ReversibleSerial([block, block])
        >>> (stack.n_in, stack.n_out, len(stack.sublayers))
        (2, 2, 8)
    """

    def __init__(self, *layers: Any, name: str | None = None):
        super().__init__(*layers, name=name or 'ReversibleSerial')
        not_reversible = [f'[{i}] {layer.name}' for i, layer in enumerate(self.sublayers)
                          if not isinstance(layer, ReversibleLayer)]
        if not_reversible:
            raise ValueError(f'ReversibleSerial: every sublayer must be a ReversibleLayer '
                             f'(e.g. ReversibleHalfResidual, ReversibleSwap); not reversible: '
                             f'{", ".join(not_reversible)}')

    def reverse(self, output: Any, weights: Any = (), state: Any = (), new_state: Any = (),
                rng: Any = None) -> Any:
        rngs = self.sublayer_rngs(self._rng_or_default(rng))   # as the forward split them
        stack = to_stack(output, self.n_out)
        for i in reversed(range(len(self.sublayers))):
            layer = self.sublayers[i]
            with self.sublayer_context(i):
                x = layer.reverse(from_stack(stack, layer.n_out), weights[i], state[i], new_state[i],
                                  rngs[i])
            stack = to_stack(x, layer.n_in) + stack[layer.n_out:]
        return from_stack(stack, self.n_in)

    def reverse_and_grad(self, output: Any, ct: Any, weights: Any = (), state: Any = (),
                         new_state: Any = (), rng: Any = None) -> tuple[Any, tuple[Any, Any]]:
        rngs = self.sublayer_rngs(self._rng_or_default(rng))   # as the forward split them
        stack, ct_stack = to_stack(output, self.n_out), to_stack(ct, self.n_out)
        weights_ct = [()] * len(self.sublayers)
        for i in reversed(range(len(self.sublayers))):
            layer = self.sublayers[i]
            with self.sublayer_context(i):
                x, (x_ct, weights_ct[i]) = layer.reverse_and_grad(
                    from_stack(stack, layer.n_out), from_stack(ct_stack, layer.n_out), weights[i],
                    state[i], new_state[i], rngs[i])
            stack = to_stack(x, layer.n_in) + stack[layer.n_out:]
            ct_stack = to_stack(x_ct, layer.n_in) + ct_stack[layer.n_out:]
        return from_stack(stack, self.n_in), (from_stack(ct_stack, self.n_in), tuple(weights_ct))


__all__ = ['ReversibleHalfResidual', 'ReversibleLayer', 'ReversibleSelect', 'ReversibleSerial',
           'ReversibleSwap']

