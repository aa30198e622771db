"""SparseFF's load-balancing term: its value (the formula in NumPy, 1 when the units are used
evenly, N when one takes every token), its place in the state and in `auxiliary_losses`,
its gradient (finite differences), and its refusal inside a replayed (reversible) call."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.layers import sparse_ff_controller as controller
from tests import helpers
from tests.layers.cases import floats

D, D_FF, N = 8, 16, 4          # 4 blocks of 4 units


def _numpy_balance(logits):
    """N · Σ_j f_j P_j per block, averaged over the blocks: logits [T, nb, N]."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    share = np.eye(logits.shape[-1])[logits.argmax(-1)].mean(0)          # [nb, N]
    return logits.shape[-1] * (share * p.mean(0)).sum(-1).mean()


def test_balance_loss_formula_and_its_bounds(backend_name):
    logits = floats(12, 3, N, seed=1) * 3
    uniform_choice = np.tile(np.eye(N) * 50.0, (3, 3, 1)).transpose(1, 0, 2)  # token t: unit t%N
    collapsed = np.zeros((12, 3, N), np.float32)
    collapsed[..., 0] = 50.0
    with fastmath.use_backend(backend_name):
        value = float(controller.balance_loss(logits))
        even = float(controller.balance_loss(uniform_choice[:12].astype(np.float32)))
        one = float(controller.balance_loss(collapsed))
    np.testing.assert_allclose(value, _numpy_balance(logits), rtol=1e-5)
    np.testing.assert_allclose([even, one], [1.0, N], rtol=1e-5)


def test_state_holds_the_weighted_term_and_auxiliary_losses_finds_it(backend_name):
    x = floats(2, 5, D, seed=2)
    model = tl.Serial(tl.Dense(D), tl.SparseFF(D_FF, n_elements_in_block=N, load_balance=0.3))
    with fastmath.use_backend(backend_name):
        weights, state = model.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
        _, new_state = model.pure_fn(x, weights, state, fastmath.random.get_prng(1))
        (term,) = model.auxiliary_losses(new_state)
        hidden = tl.Dense(D).pure_fn(x, weights[0], (), None)[0]
        logits = controller.controller_logits(np.asarray(hidden).reshape(-1, D), weights[1][0],
                                              D_FF // N, N)
    np.testing.assert_allclose(float(term), 0.3 * _numpy_balance(np.asarray(logits)),
                               rtol=1e-5)
    assert tl.SparseFF(D_FF, n_elements_in_block=N).auxiliary_losses(state[1][:2]) == ()
    eval_model = tl.Serial(tl.Dense(D), tl.SparseFF(D_FF, n_elements_in_block=N,
                                                    load_balance=0.3, mode='eval'))
    with fastmath.use_backend(backend_name):
        _, eval_state = eval_model.pure_fn(x, weights, state, None)
    assert [float(t) for t in eval_model.auxiliary_losses(eval_state)] == [0.0]


def test_balance_term_gradient_matches_finite_differences():
    x = floats(4, D, seed=3)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=0.0, load_balance=1.0)
    with fastmath.use_backend('numpy'):
        weights, state = layer.init(shapes.signature(x), rng=fastmath.random.get_prng(0))

    def term(params):               # (the inputs too: the layer computes in their dtype)
        controller_weights, inputs = params
        _, new_state = layer.pure_fn(inputs, (controller_weights, weights[1]), state,
                                     np.array([0, 4], np.uint32))
        return layer.auxiliary_losses(new_state)[0]
    with fastmath.use_backend('jax'):
        grads = jax.grad(term)((weights[0], x))[0]
    assert all(np.abs(np.asarray(g)).max() > 1e-4 for g in grads)
    assert helpers.check_grads_fd(term, (weights[0], x), n_probes=4) > 0


def test_refused_inside_a_reversible_layer():
    x = (floats(2, 3, D, seed=4), floats(2, 3, D, seed=5))
    sparse = tl.SparseFF(D_FF, n_elements_in_block=N, load_balance=0.1)
    model = tl.ReversibleSerial(tl.ReversibleHalfResidual(sparse), tl.ReversibleSwap())
    with fastmath.use_backend('jax'):
        weights, state = model.init(shapes.signature(x), rng=fastmath.random.get_prng(0))

        def loss(w):
            y, _ = model.pure_fn(x, w, state, fastmath.random.get_prng(1))
            return y[0].sum()
        with pytest.raises(tl.LayerError, match=r'SparseFF_16: load_balance=0.1 needs plain '
                                                 r'autodiff; inside a reversible or chunked layer'):
            jax.grad(loss)(weights)
