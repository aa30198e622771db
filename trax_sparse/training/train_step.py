"""Pure train and eval steps, and the jit-able initialization of everything they need.

`TrainState(weights, state, opt_state)` is what one step changes. `make_train_step`
returns `step_fn(train_state, batch, train_key, step) -> (train_state, metrics)`: one
value_and_grad of model.pure_fn + loss layer (+ the model's `auxiliary_losses`, e.g.
SparseFF's load balance), an optax update, the model state threaded
through, rng = fold_in(train_key, step); no Python side effects, so it jits (with the
train state donated). `make_eval_step` returns the eval-mode counterpart that yields the
metric values and the batch weight. `initialize` makes keys, weights, states and the
optimizer state from batch signatures (call it under jit: nothing is computed twice).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> from trax_sparse.training import optimizers
    >>> x = np.arange(8, dtype=np.int32).reshape(2, 4) % 5
    >>> model, loss = tl.Serial(tl.Embedding(5, 8), tl.Dense(5)), tl.CrossEntropyLoss()
    >>> tx = optimizers.SGD().transform(lambda step: 0.1)
    >>> with fastmath.use_backend('jax'):
    ...     key = fastmath.random.get_prng(0)
    ...     init = initialize(model, loss, tx, key, shapes.signature((x, x, x * 0.0 + 1)))
    ...     step = make_train_step(model, loss, init['loss'], tx)
    ...     ts, metrics = step(TrainState(init['weights'], init['state'], init['opt_state']),
    ...                        (x, x, np.ones((2, 4), np.float32)), init['train_key'], 1)
    >>> sorted(metrics)
    ['accuracy', 'grad_norm', 'log_perplexity', 'loss']
"""
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from trax_sparse import fastmath
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.fastmath import tree_leaves, tree_map, tree_structure
from trax_sparse.layers.stack import from_stack, to_stack


class TrainState(NamedTuple):
    """What a train step updates: model weights, model state, optimizer state."""
    weights: Any
    state: Any
    opt_state: Any


class TreeMismatchError(ValueError):
    """Two weight/state trees differ in structure, shape or dtype."""


def is_prediction_stack(stack: Sequence) -> bool:
    """(logits [..., V], int targets [...], weights [...]) on top: accuracy applies."""
    return (len(stack) >= 3 and len(stack[0].shape) == len(stack[1].shape) + 1
            and np.issubdtype(stack[1].dtype, np.integer))


def check_same_tree(name: str, got: Any, expected: Any, source: str) -> None:
    """Raises TreeMismatchError naming `source` unless the trees match leaf by leaf."""
    if tree_structure(got) != tree_structure(expected):
        raise TreeMismatchError(f'{source}: the {name} tree does not have the structure of '
                                f'the model (a checkpoint of another model?)')
    for i, (a, b) in enumerate(zip(tree_leaves(got), tree_leaves(expected))):
        if tuple(np.shape(a)) != tuple(np.shape(b)) or np.dtype(a.dtype) != np.dtype(b.dtype):
            raise TreeMismatchError(
                f'{source}: {name} leaf {i} is {np.dtype(a.dtype)}{list(np.shape(a))}, the model '
                f'has {np.dtype(b.dtype)}{list(np.shape(b))}')


def check_trainable_precision(output_dtype: Any) -> None:
    """Refuses a model that computes in float16: training it needs loss scaling, which this
    library does not do (bfloat16 has float32's range and needs none)."""
    if np.dtype(output_dtype) == np.float16:
        raise ValueError("the model computes in float16 (compute_dtype='float16'): training in "
                         "float16 needs loss scaling, which trax_sparse does not do; train with "
                         "compute_dtype='bfloat16' (float32's range, no loss scaling) and use "
                         "float16 for eval and decoding only")


def _stack_signature(model: tl.Layer, batch_sig: Sequence, weights: Any, state: Any,
                     key: Any) -> list:
    out_sig = model.abstract_forward(from_stack(batch_sig, model.n_in), weights, state, key)
    return to_stack(out_sig, model.n_out) + list(batch_sig[model.n_in:])


def initialize(model: tl.Layer, loss: tl.Layer, tx: Any, base_key: Any, batch_sig: Sequence,
               eval_model: tl.Layer | None = None, eval_metrics: Sequence = (),
               eval_batch_sigs: Sequence = (), info: dict | None = None) -> dict:
    """Keys, weights, states, optimizer state, loss and eval-metric weights (a dict).

    eval_metrics: one list of metric layers per eval task, with its batch signature in
    eval_batch_sigs. `info` (a dict, filled while tracing) gets 'vocab_sizes' (of the
    model's Embedding layers) and 'output_shape' (of the model's first output).
    """
    init_key, train_key, eval_key = fastmath.random.split(base_key, 3)
    weights, state = model.pure_init(from_stack(batch_sig, model.n_in), rng=init_key)
    stack_sig = _stack_signature(model, batch_sig, weights, state, init_key)
    check_trainable_precision(stack_sig[0].dtype)
    if info is not None:
        info['vocab_sizes'] = list(model.vocab_sizes())
        info['output_shape'] = tuple(stack_sig[0].shape)
    values = {'init_key': init_key, 'train_key': train_key, 'eval_key': eval_key,
              'weights': weights, 'state': state, 'opt_state': tx.init(weights),
              'loss': loss.pure_init(from_stack(stack_sig, loss.n_in), rng=init_key),
              'eval_state': (), 'metrics': []}
    if not eval_batch_sigs:
        return values
    eval_weights, values['eval_state'] = eval_model.pure_init(
        from_stack(eval_batch_sigs[0], eval_model.n_in), rng=eval_key)
    try:
        check_same_tree('weights', eval_weights, weights, 'eval_model')
    except TreeMismatchError as e:
        raise ValueError(f'eval_model must have the weights tree of the trained model '
                         f'(the same model in eval mode): {e}') from None
    for metrics, batch_sig in zip(eval_metrics, eval_batch_sigs):
        stack_sig = _stack_signature(eval_model, batch_sig, weights, values['eval_state'],
                                     eval_key)
        values['metrics'].append([m.pure_init(from_stack(stack_sig, m.n_in), rng=eval_key)
                                  for m in metrics])
    return values


def make_train_step(model: tl.Layer, loss: tl.Layer, loss_weights_and_state: tuple,
                    tx: Any) -> Callable:
    """step_fn(TrainState, batch, train_key, step) -> (TrainState, metrics dict)."""
    loss_weights, loss_state = loss_weights_and_state
    accuracy, cross_entropy = tl.Accuracy(), tl.CrossEntropyLoss()
    n_in = model.n_in

    def step_fn(train_state: TrainState, batch: Sequence, train_key: Any, step: Any):
        weights, state, opt_state = train_state
        rng = fastmath.random.fold_in(train_key, step)

        def loss_fn(w):
            outputs, new_state = model.pure_fn(from_stack(batch, n_in), w, state, rng)
            stack = to_stack(outputs, model.n_out) + list(batch[n_in:])
            value, _ = loss.pure_fn(from_stack(stack, loss.n_in), loss_weights, loss_state,
                                    rng)
            terms = model.auxiliary_losses(new_state)
            auxiliary = sum(terms) if terms else None
            total = value if auxiliary is None else value + auxiliary
            return total, (new_state, stack, value, auxiliary)

        (_, (new_state, stack, value, auxiliary)), grads = fastmath.value_and_grad(
            loss_fn, has_aux=True)(weights)
        updates, opt_state = tx.update(grads, opt_state, weights)
        weights = tree_map(lambda w, u: w + u.astype(w.dtype), weights, updates)
        grad_norm = xnp.sqrt(sum(xnp.sum(xnp.square(g.astype(xnp.float32)))
                                 for g in tree_leaves(grads)))
        metrics = {'loss': value, 'grad_norm': grad_norm}
        if auxiliary is not None:
            metrics['auxiliary_loss'] = auxiliary
        if is_prediction_stack(stack):
            top = tuple(stack[:3])
            metrics['accuracy'] = accuracy.pure_fn(top, (), (), rng)[0]
            metrics['log_perplexity'] = value if isinstance(loss, tl.CrossEntropyLoss) else \
                cross_entropy.pure_fn(top, (), (), rng)[0]  # (the loss knows its padding id)
        return TrainState(weights, new_state, opt_state), metrics
    return step_fn


def make_eval_step(model: tl.Layer, metrics: Sequence[tl.Layer],
                   metric_weights: Sequence) -> Callable:
    """eval_fn(weights, eval_state, batch, eval_key, step, batch_index) -> (values, weight)."""
    def eval_fn(weights, eval_state, batch, eval_key, step, batch_index):
        rng = fastmath.random.fold_in(fastmath.random.fold_in(eval_key, step), batch_index)
        outputs, _ = model.pure_fn(from_stack(batch, model.n_in), weights, eval_state, rng)
        stack = to_stack(outputs, model.n_out) + list(batch[model.n_in:])
        values = [m.pure_fn(from_stack(stack, m.n_in), w, s, rng)[0]
                  for m, (w, s) in zip(metrics, metric_weights)]
        weight = xnp.sum(stack[2]) if len(stack) >= 3 else xnp.ones(())
        return values, weight
    return eval_fn


__all__ = ['TrainState', 'TreeMismatchError', 'check_same_tree', 'check_trainable_precision',
           'from_stack', 'initialize', 'is_prediction_stack', 'make_eval_step', 'make_train_step',
           'to_stack']
