"""Position-wise layers run over chunks of the length axis: Reformer's chunked feed-forward.

A feed-forward layer's hidden activations ([B, L, d_ff]) are the largest
buffers of a long-input training step once attention is chunked (LSH) and
the blocks are reversible (docs/RESULTS.md, section 2). The FF is
position-wise, so it can run on `chunk_len` positions at a time: a scan over
the chunks whose steps are rematerialized keeps one chunk's hidden layer
alive in the forward pass and in the backward pass.

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
from trax_sparse.layers.base import Layer
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
        chunks = [self._chunked(x, n) for x in items]                   # [n, B, c, ...] each
        if fastmath.tree_leaves(s) and fastmath.tree_leaves(s)[0].shape[:1] != (n,):
            s = fastmath.tree_map(lambda a: xnp.broadcast_to(a, (n,) + tuple(a.shape)), s)
        uses_rng = layer.uses_rng

        def step(_, chunk_state_index):
            chunk, st, i = chunk_state_index
            rng = fastmath.random.fold_in(self.rng, i) if uses_rng else self.rng
            with self.sublayer_context(0):
                out, st = layer.pure_fn(from_stack(list(chunk), self.n_in), w, st, rng)
            return (), (tuple(to_stack(out, self.n_out)), st)

        _, (outs, s) = fastmath.scan(fastmath.remat(step), (),
                                     (tuple(chunks), s, xnp.arange(n)), length=n)
        self.state = (s,)
        return from_stack([self._unchunked(o, length) for o in outs], self.n_out)

    def _chunked(self, x: Any, n: int) -> Any:
        """[B, L, ...] -> [n, B, c, ...] (padded with zeros to n·c positions)."""
        c = self._chunk_len
        pad = [(0, 0)] * len(x.shape)
        pad[1] = (0, n * c - x.shape[1])
        x = xnp.pad(x, pad)
        return xnp.swapaxes(x.reshape((x.shape[0], n, c) + tuple(x.shape[2:])), 0, 1)

    @staticmethod
    def _unchunked(y: Any, length: int) -> Any:
        """[n, B, c, ...] -> [B, L, ...] (padding dropped)."""
        y = xnp.swapaxes(y, 0, 1)
        return y.reshape((y.shape[0], -1) + tuple(y.shape[3:]))[:, :length]


__all__ = ['PositionwiseChunk']
