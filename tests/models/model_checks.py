"""Shared checks for models: predict == eval token by token, and a training step lowers the loss."""
from typing import Callable

import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import tree_leaves, tree_structure


def _compiled(fn: Callable) -> Callable:
    """jit on JAX (eager JAX dispatches op by op: slow for whole models), as is on NumPy."""
    return fastmath.jit(fn) if fastmath.is_jax() else fn


def shifted(tokens: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)


def lm_predict_equals_eval(make: Callable[[str], tl.Layer], tokens: np.ndarray,
                           prefix: int = 3, atol: float = 1e-4) -> None:
    """Feeds a prefix, then one token at a time, and compares with one eval pass."""
    ev, pr = make('eval'), make('predict')
    weights, ev_state = ev.init(shapes.signature(tokens), rng=fastmath.random.get_prng(1))
    full, _ = _compiled(ev.pure_fn)(tokens, weights, ev_state, fastmath.random.get_prng(2))
    _, state = pr.init(shapes.signature(tokens[:, :1]), rng=fastmath.random.get_prng(1))
    assert tree_structure(pr.weights) == tree_structure(weights)
    inputs, outs, t = shifted(tokens), [], 0
    run = _compiled(pr.pure_fn)                            # the prefix call is jitted too
    for size in [prefix] + [1] * (tokens.shape[1] - prefix):
        step, state = run(inputs[:, t:t + size], weights, state, fastmath.random.get_prng(2))
        outs.append(np.asarray(step))
        t += size
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), atol=atol, rtol=1e-3)


def encdec_predict_equals_eval(make: Callable[[str], tl.Layer], inputs: np.ndarray,
                               targets: np.ndarray, prefix: int = 2, atol: float = 1e-4,
                               inputs_every_step: bool = False) -> None:
    """Later calls take empty encoder inputs (the documented form) or, with
    inputs_every_step, the same inputs again (Trax's form)."""
    ev, pr = make('eval'), make('predict')
    weights, ev_state = ev.init(shapes.signature((inputs, targets)),
                                rng=fastmath.random.get_prng(1))
    (full, passed), _ = _compiled(ev.pure_fn)((inputs, targets), weights, ev_state,
                                              fastmath.random.get_prng(2))
    np.testing.assert_array_equal(np.asarray(passed), targets)
    _, state = pr.init(shapes.signature((inputs, targets[:, :1])))
    assert tree_structure(pr.weights) == tree_structure(weights)
    dec_in, outs, t = shifted(targets), [], 0
    run = _compiled(pr.pure_fn)                            # the prefix call is jitted too
    for size in [prefix] + [1] * (targets.shape[1] - prefix):
        given = inputs if t == 0 or inputs_every_step else inputs[:, :0]
        (step, _), state = run((given, dec_in[:, t:t + size]), weights, state,
                               fastmath.random.get_prng(2))
        outs.append(np.asarray(step))
        t += size
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), atol=atol, rtol=1e-3)


def training_lowers_loss(model: tl.Layer, batch: tuple, steps: int = 16,
                         learning_rate: float = 1e-2) -> tuple[float, float]:
    """A few Adam steps (optax) on one fixed batch with the JAX backend; returns (first, last)."""
    import jax
    import optax
    loss_layer = tl.CrossEntropyLoss()
    with fastmath.use_backend('jax'):
        n_model_in = model.n_in
        weights, state = model.init(shapes.signature(batch[:n_model_in] if n_model_in > 1
                                                     else batch[0]),
                                    rng=fastmath.random.get_prng(0))
        optimizer = optax.adam(learning_rate)
        opt_state = optimizer.init(weights)

        def loss_fn(w, st, rng):
            x = batch[:n_model_in] if n_model_in > 1 else batch[0]
            out, new_st = model.pure_fn(x, w, st, rng)
            logits = out[0] if isinstance(out, tuple) else out
            return loss_layer((logits, batch[-2], batch[-1])), new_st

        @jax.jit
        def step(w, st, opt_st, rng):
            (loss, new_st), grads = jax.value_and_grad(loss_fn, has_aux=True)(w, st, rng)
            updates, opt_st = optimizer.update(grads, opt_st, w)
            return optax.apply_updates(w, updates), new_st, opt_st, loss

        losses = []
        for i in range(steps):
            weights, state, opt_state, loss = step(weights, state, opt_state,
                                                   fastmath.random.get_prng(i))
            losses.append(float(loss))
    assert all(np.isfinite(losses)), losses
    assert all(np.all(np.isfinite(np.asarray(w))) for w in tree_leaves(weights))
    return losses[0], losses[-1]
