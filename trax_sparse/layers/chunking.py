"""Position-wise layers run over chunks of the length axis: Reformer's chunked feed-forward.

A feed-forward layer's hidden activations ([B, L, d_ff]) are the largest
buffers of a long-input training step once attention is chunked (LSH) and
the blocks are reversible (docs/RESULTS.md, section 2). The FF is
position-wise, so it can run on `chunk_len` positions at a time: a loop over
the chunks, with a backward pass that recomputes and pulls back one chunk at a
time, keeps one chunk's hidden layer alive in the forward and backward passes.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes
    >>> from trax_sparse import layers as tl
    >>> ff = tl.Serial(tl.Dense(32), tl.Relu(), tl.Dense(8))
    >>> x = np.random.default_rng(0).normal(size=(1, 10, 8)).astype(np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     chunked = PositionwiseChunk(ff, chunk_len=4)
    ...     weights, state = chunked.init(shapes.signature(x))
    ...     y, _ = chunked.pure_fn(x, weights, state)
    ...     plain, _ = ff.pure_fn(x, weights, ff.state)
    >>> bool(np.allclose(y, plain, atol=1e-6))
    True
"""
from typing import Any

from trax_sparse import fastmath, shapes
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer, replay_context
from trax_sparse.layers.combinators import _WeightTransparent
from trax_sparse.layers.stack import from_stack, to_stack


def _n_chunks(length: int, chunk_len: int) -> int:
    return -(-length // chunk_len)


class PositionwiseChunk(_WeightTransparent):
    """Runs a position-wise `layer` on chunks of `chunk_len` positions along axis 1.

    Every input is [B, L, ...] with the same L; `layer` must be position-wise (its output
    at a position depends only on its inputs there: Dense, FF, SparseFF; not SRU or
    attention). Inputs longer than chunk_len are padded to a multiple of it (padding
    positions are computed and dropped), cut into chunks and scanned, each step
    rematerialized, so the backward pass recomputes one chunk at a time; inputs of at
    most chunk_len positions (e.g. predict-mode steps) run the layer directly. Outputs
    equal the layer's outputs whenever the layer draws no random numbers (eval, predict,
    or train without dropout or noise); in train each chunk draws from
    `fold_in(rng, chunk index)`, so noise differs from an unchunked call.

    Weights are `layer`'s own (a model with or without chunking has the same weights
    tree). State: (layer state,) for a short input; for a chunked one (per-chunk layer
    states stacked on a leading axis,): a replayed call (`tl.replay_context()`, the
    reversible backward) hands chunk i its own recorded state, e.g. SparseFF's choices.

    The chunks run in a loop (`fastmath.fori_loop`) that writes each chunk's outputs into
    a buffer started from chunk 0's; the gradient is the layer's own (`backward`): chunk by
    chunk, replay the forward and pull back that chunk's cotangent. (Autodiff through a
    scan would also keep one chunk at a time, but XLA:CPU allocates the zero buffers of
    its stacked outputs and cotangents at the start of the step, one set per layer.)
    """

    def __init__(self, layer: Layer, chunk_len: int):
        chunk_len = int(chunk_len)
        if chunk_len < 1:
            raise ValueError(f'PositionwiseChunk: chunk_len must be >= 1, got {chunk_len}')
        super().__init__(n_in=layer.n_in, n_out=layer.n_out,
                         name=f'PositionwiseChunk_{chunk_len}', sublayers=[layer])
        self._chunk_len = chunk_len

    def _length(self, items: list) -> int:
        lengths = {tuple(x.shape)[1] if len(x.shape) > 1 else None for x in items}
        if len(lengths) != 1 or None in lengths:
            raise ValueError(f'{self.name}: every input must be [batch, length, ...] with one '
                             f'length; got shapes {[tuple(x.shape) for x in items]}')
        return lengths.pop()

    def init_weights_and_state(self, input_signature: Any) -> None:
        items = to_stack(input_signature, self.n_in)
        length = self._length(items)
        c = min(length, self._chunk_len)
        chunk_sig = from_stack([shapes.ShapeDtype((s.shape[0], c) + tuple(s.shape[2:]), s.dtype)
                                for s in items], self.n_in)
        with self.sublayer_context(0):
            w, s = self.sublayers[0].init(chunk_sig, self.rng)
        if length > self._chunk_len:
            n = _n_chunks(length, self._chunk_len)
            s = fastmath.tree_map(lambda a: xnp.broadcast_to(a, (n,) + tuple(a.shape)), s)
        self.weights, self.state = w, (s,)

    @property
    def has_backward(self) -> bool:
        return True

    def forward(self, xs: Any) -> Any:
        layer, w, (s,) = self.sublayers[0], self.weights, self.state
        items = to_stack(xs, self.n_in)
        length, c = self._length(items), self._chunk_len
        if length <= c:
            with self.sublayer_context(0):
                out, s = layer.pure_fn(xs, w, s, self.rng)
            self.state = (s,)
            return out
        n = _n_chunks(length, c)
        padded = [self._pad(x, n) for x in items]
        stacked = self._is_stacked(s, n)

        def run(i):
            state = fastmath.tree_map(lambda a: xnp.asarray(a)[i], s) if stacked else s
            with self.sublayer_context(0):
                out, state = layer.pure_fn(self._chunk(padded, i), w, state,
                                          self._chunk_rng(self.rng, i))
            return to_stack(out, self.n_out), state

        # Chunk 0 outside the loop: the buffers the loop writes into start from its outputs
        # (XLA:CPU allocates buffers built from constants at the start of the whole step).
        outs, state = run(0)
        outs = [self._pad(o, n) for o in outs]
        states = fastmath.tree_map(lambda a: xnp.broadcast_to(a[None], (n,) + a.shape), state)

        def body(i, carry):
            outs, states = carry
            chunk_outs, state = run(i)
            outs = [self._put(o, u, i) for o, u in zip(outs, chunk_outs)]
            states = fastmath.tree_map(
                lambda b, u: fastmath.dynamic_update_slice(b, u[None], (i,) + (0,) * u.ndim),
                states, state)
            return outs, states
        outs, states = fastmath.fori_loop(1, n, body, (outs, states))
        self.state = (states,)
        return from_stack([o[:, :length] for o in outs], self.n_out)

    def backward(self, inputs: Any, output: Any, grad: Any, weights: Any, state: Any,
                 new_state: Any, rng: Any) -> tuple[Any, Any]:
        """Per chunk: replay the forward (its recorded state), pull back that chunk's
        cotangent; input cotangents are written chunk by chunk, weight cotangents summed."""
        del output
        layer, (s,) = self.sublayers[0], new_state
        items, cts = to_stack(inputs, self.n_in), to_stack(grad, self.n_out)
        length, c = self._length(items), self._chunk_len
        zero = fastmath.backend().zero_cotangent
        floats = [i for i, x in enumerate(items) if xnp.issubdtype(x.dtype, xnp.inexact)]
        n = _n_chunks(length, c) if length > c else 1
        padded = [self._pad(x, n) for x in items] if length > c else items
        padded_cts = [self._pad(g, n) for g in cts] if length > c else cts
        stacked = length > c and self._is_stacked(s, n)

        def pull(i):
            chunk = self._chunk(padded, i) if length > c else from_stack(items, self.n_in)
            chunk_items = to_stack(chunk, self.n_in)
            st = fastmath.tree_map(lambda a: xnp.asarray(a)[i], s) if stacked else s
            chunk_rng = self._chunk_rng(rng, i) if length > c else rng

            def run(float_items, w):
                full = list(chunk_items)
                for k, x in zip(floats, float_items):
                    full[k] = x
                return layer.pure_fn(from_stack(full, self.n_in), w, st, chunk_rng)[0]
            with replay_context(), self.sublayer_context(0):
                _, pullback = fastmath.vjp(run, [chunk_items[k] for k in floats], weights)
                ct = from_stack([self._chunk_one(g, i) if length > c else g
                                 for g in padded_cts], self.n_out)
                return pullback(ct)

        x_cts, w_ct = pull(0)
        if length > c:
            x_cts = [self._pad(g, n) for g in x_cts]

            def body(i, carry):
                x_cts, w_ct = carry
                chunk_x_cts, chunk_w_ct = pull(i)
                x_cts = [self._put(g, u, i) for g, u in zip(x_cts, chunk_x_cts)]
                return x_cts, fastmath.tree_map(lambda a, b: a + b, w_ct, chunk_w_ct)
            x_cts, w_ct = fastmath.fori_loop(1, n, body, (x_cts, w_ct))
            x_cts = [g[:, :length] for g in x_cts]
        full = [zero(x) for x in items]
        for k, g in zip(floats, x_cts):
            full[k] = g
        return from_stack(full, self.n_in), w_ct

    # ---- helpers ---------------------------------------------------------------------------
    def _chunk_rng(self, rng: Any, i: Any) -> Any:
        return fastmath.random.fold_in(rng, i) if self.sublayers[0].uses_rng else rng

    @staticmethod
    def _is_stacked(state: Any, n: int) -> bool:
        """True if the state holds per-chunk states stacked on a leading axis of n."""
        leaves = fastmath.tree_leaves(state)
        return bool(leaves) and all(tuple(a.shape)[:1] == (n,) for a in leaves)

    def _pad(self, x: Any, n: int) -> Any:
        """[B, L, ...] -> [B, n·c, ...], zeros after position L (chunk 0 alone: [B, c, ...])."""
        pad = [(0, 0)] * len(x.shape)
        pad[1] = (0, n * self._chunk_len - x.shape[1])
        return xnp.pad(x, pad)

    def _chunk_one(self, x: Any, i: Any) -> Any:
        """Positions [i·c, (i+1)·c) of a padded [B, n·c, ...] input."""
        start = (0, i * self._chunk_len) + (0,) * (len(x.shape) - 2)
        return fastmath.dynamic_slice(x, start, (x.shape[0], self._chunk_len) + tuple(
            x.shape[2:]))

    def _chunk(self, padded: list, i: Any) -> Any:
        return from_stack([self._chunk_one(x, i) for x in padded], self.n_in)

    def _put(self, buffer: Any, update: Any, i: Any) -> Any:
        """buffer [B, n·c, ...] with chunk i replaced by update [B, c, ...]."""
        start = (0, i * self._chunk_len) + (0,) * (len(buffer.shape) - 2)
        return fastmath.dynamic_update_slice(buffer, update.astype(buffer.dtype), start)


__all__ = ['PositionwiseChunk']
