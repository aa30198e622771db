"""Predict-mode state handling shared by sampling and beam search.

Decoding threads the model state explicitly through `pure_fn`; it never writes
to `model.state`, so a model can be decoded twice in a row (Trax #1713).
"""
from typing import Any, Callable

import numpy as onp

from trax_sparse import fastmath, shapes
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer


def check_predict_model(model: Layer) -> None:
    if model.weights is None:
        raise ValueError(f'decoding: {model.name} is not initialized; call '
                         f'model.init(signature of one step of inputs) and set model.weights first')


def fresh_state(model: Layer, state: Any = None) -> Any:
    """A private copy of a predict state (default: the model's initial one) on the live backend.

    The copy is safe to update in place (NumPy caches) or to donate (JAX).
    """
    check_predict_model(model)
    state = model.state if state is None else state
    if fastmath.is_jax():
        return fastmath.tree_map(lambda a: xnp.array(a, copy=True), state)
    return fastmath.tree_map(lambda a: onp.array(a, copy=True), state)


def step_function(model: Layer, accelerate: bool = True) -> Callable:
    """(inputs, weights, state, rng) -> (logits of the last position [B, V], new_state).

    On JAX the calls after the first are jit-compiled with the state donated,
    so caches update in place. The first call (the prefix: start token, prompt,
    encoder inputs) runs without jit, so layers that prime their caches on it
    (e.g. the Terraformer's joint sequence) see a concrete state.
    """
    def step(inputs, weights, state, rng):
        out, new_state = model.pure_fn(inputs, weights, state, rng)
        logits = out[0] if isinstance(out, (tuple, list)) else out   # [B, L, V]
        return logits[:, -1, :], new_state

    if not (accelerate and fastmath.is_jax()):
        return step
    compiled = fastmath.jit(step, donate_argnums=(2,))
    n_calls = [0]

    def first_eager_then_compiled(inputs, weights, state, rng):
        n_calls[0] += 1
        return (step if n_calls[0] == 1 else compiled)(inputs, weights, state, rng)
    return first_eager_then_compiled


def batch_leaf_mask(model: Layer, signature_for_batch: Callable[[int], Any],
                    batch_size: int) -> list[bool]:
    """For each state leaf: does its leading axis run over the batch?

    Found by comparing the abstract initial state at batch sizes B and B+1 (no
    guessing from shapes that happen to coincide). `signature_for_batch(b)`
    gives the signature of one decoding step's inputs at batch size b.
    """
    def state_leaves(b):
        snapshot = model._snapshot()
        try:
            if fastmath.is_jax():
                out = fastmath.abstract_eval(lambda: model.init(signature_for_batch(b))[1])()
            else:
                out = fastmath.tree_map(shapes.signature, model.init(signature_for_batch(b))[1])
        finally:
            model._restore(snapshot)
        return fastmath.tree_leaves(out)

    a, b = state_leaves(batch_size), state_leaves(batch_size + 1)
    return [bool(x.shape and y.shape and x.shape[0] != y.shape[0]) for x, y in zip(a, b)]


def reorder_state(state: Any, mask: list[bool], index: Any) -> Any:
    """Gathers batch rows `index` [B'] of every batch-indexed state leaf."""
    leaves = fastmath.tree_leaves(state)
    new = [xnp.take(leaf, index, axis=0) if is_batch else leaf
           for leaf, is_batch in zip(leaves, mask)]
    return fastmath.tree_unflatten_like(state, new)
