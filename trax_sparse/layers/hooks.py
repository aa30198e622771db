"""The public hooks that code walking a layer tree asks each layer (no isinstance walks).

Decoding, timing, benchmarks, training and sharding ask a layer what its
sublayers' trees are, what vocabularies it reads, what one decoding step reads
and computes, and what its weights' axes are called. `Layer` inherits these
defaults; a layer that differs overrides the hook, and a wrapper forwards it
(docs/architecture.md, "Hooks").

Example:
    >>> from trax_sparse import layers as tl
    >>> model = tl.Serial(tl.Embedding(10, 4), tl.Dense(3))
    >>> model.vocab_sizes(), tl.Cache(model).shares_child_weights
    ((10,), True)
"""
from typing import Any, Sequence

import numpy as onp

from trax_sparse import fastmath


class TreeHooks:
    """The hooks' defaults, for a layer with `_sublayers` (see the module docstring)."""

    _sublayers: tuple
    _uses_rng: bool | None
    _rng: Any

    def draws_random_numbers(self) -> bool:
        """Whether this layer's own forward reads `self.rng` (sublayers not counted).

        True unless a layer says otherwise (safe: its sublayers then get keys
        split from its own). Deterministic layers return False, so a
        combinator whose sublayers draw nothing passes its key on instead of
        splitting it: a split per combinator per call is real cost on NumPy.
        """
        return True

    @property
    def uses_rng(self) -> bool:
        """True if this layer or any sublayer draws random numbers in its mode."""
        if self._uses_rng is None:
            self._uses_rng = bool(self.draws_random_numbers()
                                  or any(sub.uses_rng for sub in self._sublayers))
        return self._uses_rng

    def sublayer_rngs(self, rng: Any = None) -> list:
        """One key per sublayer: split from `rng` (default self.rng) when some sublayer
        draws random numbers, else `rng` itself for each (unused)."""
        rng = self._rng if rng is None else rng
        if self.uses_rng:
            return split_rngs(rng, len(self._sublayers))
        return [rng] * len(self._sublayers)

    @property
    def has_backward(self) -> bool:
        """True if the layer defines `backward` (turned into jax.custom_vjp on JAX)."""
        return False

    def _distribute(self, attr: str, values: Any) -> None:
        # Outside calls, keep sublayers in sync so `model.sublayers[i].weights` reads well.
        if not self._sublayers:
            return
        split = self.sublayer_weights if attr == 'weights' else self.sublayer_states
        try:
            parts = split(values)
        except (TypeError, IndexError, ValueError):
            return
        if isinstance(parts, (tuple, list)) and len(parts) == len(self._sublayers):
            for sub, value in zip(self._sublayers, parts):
                setattr(sub, attr, value)

    @property
    def shares_child_weights(self) -> bool:
        """True for a wrapper whose weights tree IS its one sublayer's (tl.Cache, tl.Chunk).

        Such a wrapper never changes the weights tree, so weights trained without
        it load unchanged. Override together with `sublayer_weights` /
        `sublayer_states`.
        """
        return False

    def sublayer_weights(self, weights: Any) -> Sequence[Any]:
        """The entry of this layer's `weights` for each sublayer, in order.

        Default: `weights` is a tuple with one entry per sublayer (() for a leaf,
        whose weights are its own). A wrapper that shares its child's weights
        returns `(weights,)`.
        """
        if not self._sublayers:
            return ()
        if self.shares_child_weights:
            return (weights,)
        return weights

    def sublayer_states(self, state: Any) -> Sequence[Any]:
        """The entry of this layer's `state` for each sublayer, in order (as `sublayer_weights`).

        A weight-sharing wrapper's state is (child state, *its own), so the default
        for it is `(state[0],)`.
        """
        if not self._sublayers:
            return ()
        if self.shares_child_weights:
            return (state[0],)
        return state

    def weight_axes(self) -> Any:
        """The logical axis names of this layer's weights: a tree like its weights tree whose
        leaves are `sharding.Axes` ('embed', 'mlp', 'heads', 'kv', 'vocab', ...; None for an
        axis never split). `trax_sparse.sharding` maps them to mesh axes.

        Default: its sublayers' (the child's for a weight-sharing wrapper); () for a leaf, so
        a layer that creates weights must override it (the contract tests check every one).
        """
        if self.shares_child_weights:
            return self._sublayers[0].weight_axes()
        return tuple(sub.weight_axes() for sub in self._sublayers)

    def vocab_sizes(self) -> tuple[int, ...]:
        """The vocabularies of the token-id inputs this layer reads (its embeddings), in order.

        Default: those of its sublayers; an embedding returns its own. A model's
        token ids must lie in the vocabulary these give (`decoding`, `training`).
        """
        return tuple(n for sub in self._sublayers for n in sub.vocab_sizes())

    def bytes_read_per_step(self, weights: Any) -> int:
        """Weight bytes one predict-mode step (batch 1, one token) reads with these weights.

        Default: a leaf reads every weight; a combinator what its sublayers read.
        Layers that read less override it (an embedding reads one row, SparseFF
        its chosen rows, a cached encoder nothing after the first call).
        """
        if not self._sublayers:
            return sum(_size(w) * _itemsize(w) for w in fastmath.tree_leaves(weights))
        return sum(sub.bytes_read_per_step(w)
                   for sub, w in zip(self._sublayers, self.sublayer_weights(weights)))

    def gathered_weights(self, weights: Any) -> tuple:
        """The arrays of these weights that a predict step reads a few rows of (a gather,
        each row cast to the compute dtype after the read), never in a dense product.

        What decoding stores in 16 bits with weights_dtype='gathered_bfloat16'
        (`decoding.storage`): there 16 bits halve the bytes read without widening a whole
        matrix per step. Default: none for a leaf; a combinator's are its sublayers'. An
        embedding or position table returns its table, SparseFF its rows (W1ᵀ, W2, b1).
        """
        if not self._sublayers:
            return ()
        return tuple(array for sub, w in zip(self._sublayers, self.sublayer_weights(weights))
                     for array in sub.gathered_weights(w))

    def attention_caches(self, state: Any) -> tuple:
        """The attention K/V cache arrays of this predict `state` (its leaves themselves).

        What decoding stores in 16 bits with cache_dtype='bfloat16' (`decoding.storage`).
        Attention layers return their key and value caches; positions, recurrent
        statistics (SRU) and cached encoder outputs (tl.Cache) are not K/V caches. Default:
        none for a leaf; a combinator's are its sublayers' (through `sublayer_states`).
        """
        if not self._sublayers:
            return ()
        return tuple(array for sub, s in zip(self._sublayers, self.sublayer_states(state))
                     for array in sub.attention_caches(s))

    def auxiliary_losses(self, state: Any) -> tuple:
        """The terms this training-mode `state` adds to the loss (float32 scalars that the
        forward pass computed from the weights, e.g. SparseFF's load balance).

        The training step adds their sum to the loss it differentiates and logs it as
        'auxiliary_loss'. Default: none for a leaf; a combinator's are its sublayers'.
        """
        if not self._sublayers:
            return ()
        return tuple(term for sub, s in zip(self._sublayers, self.sublayer_states(state))
                     for term in sub.auxiliary_losses(s))

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        """Multiply-adds of one predict-mode step (batch 1, one token) with these weights.

        Default: a leaf does one per element of each weight matrix (a matrix-vector
        product; biases and scales are adds); a combinator what its sublayers do.
        Attention cores add 2·n_keys·kv_width (q·k and p·v over n_keys cached
        positions of width kv_width = d_model).
        """
        if not self._sublayers:
            return sum(_size(w) for w in fastmath.tree_leaves(weights)
                       if len(getattr(w, 'shape', ())) >= 2)
        return sum(sub.macs_per_step(w, n_keys, kv_width)
                   for sub, w in zip(self._sublayers, self.sublayer_weights(weights)))


def _size(array: Any) -> int:
    """Number of elements of an array or ShapeDtype."""
    return int(onp.prod(getattr(array, 'shape', ()), dtype=onp.int64))


def _itemsize(array: Any) -> int:
    return onp.dtype(array.dtype).itemsize


def split_rngs(rng: Any, n: int) -> list:
    """n independent keys from `rng` (an empty list for n == 0)."""
    if n == 0:
        return []
    return list(fastmath.random.split(rng, n))
