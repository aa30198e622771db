"""The training step adds the model's `auxiliary_losses` (SparseFF's load balance) to the loss
it differentiates, and logs them apart: 'loss' stays the loss layer's value."""
import jax
import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.training import optimizers
from trax_sparse.training.train_step import TrainState, initialize, make_train_step
from tests import helpers


def test_train_step_descends_the_loss_plus_the_balance_term():
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) % 5
    batch = (ids, ids, np.ones((2, 6), np.float32))
    model = tl.Serial(tl.Embedding(5, 8),
                      tl.SparseFF(16, n_elements_in_block=4, quant_prob=0.0, load_balance=0.5),
                      tl.Dense(5))
    loss = tl.CrossEntropyLoss()
    tx = optimizers.SGD().transform(lambda step: 1.0)       # new weights = weights - gradient
    with fastmath.use_backend('jax'):
        init = initialize(model, loss, tx, fastmath.random.get_prng(0),
                          shapes.signature(batch))
        step = make_train_step(model, loss, init['loss'], tx)
        state, metrics = jax.jit(step)(
            TrainState(init['weights'], init['state'], init['opt_state']), batch,
            init['train_key'], 1)
        rng = fastmath.random.fold_in(init['train_key'], 1)

        def parts(weights):
            logits, new_state = model.pure_fn(ids, weights, init['state'], rng)
            value = loss.pure_fn((logits, ids, batch[2]), init['loss'][0], (), rng)[0]
            return value, model.auxiliary_losses(new_state)[0]
        value, term = parts(init['weights'])
        grads = jax.grad(lambda w: sum(parts(w)))(init['weights'])
    np.testing.assert_allclose([metrics['loss'], metrics['auxiliary_loss']], [value, term],
                               rtol=1e-6)
    assert 0.5 <= float(term) <= 0.5 * 4
    descent = jax.tree_util.tree_map(lambda a, b: a - b, init['weights'], state.weights)
    helpers.assert_trees_close(descent, grads, atol=1e-6, rtol=1e-5)
    controller_grads = jax.grad(lambda w: parts(w)[1])(init['weights'])[1][0]
    assert all(np.abs(np.asarray(g)).max() > 1e-4 for g in controller_grads)
