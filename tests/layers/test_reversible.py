"""Reversible layers: reverse(forward(x)) == x, custom gradients == autodiff, replay, memory."""
import importlib.util
import pathlib
from typing import Any

import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.fastmath import tree_leaves
from trax_sparse.testing import autodiff_twin
from tests import helpers
from tests.layers.cases import floats
from tests.layers.cases.reversible_cases import ExpScale, revnet_block

D, D_FF = 4, 8
RNG, OTHER_RNG = np.array([0, 11], np.uint32), np.array([0, 12], np.uint32)


class RandomSign(tl.Layer):
    """x * s with s [d] random ±1 drawn from the rng and kept in state; replayed from the state.

    With honour_replay=False it draws again even when replaying (the negative control).
    """

    def __init__(self, honour_replay: bool = True):
        super().__init__(name='RandomSign')
        self._honour_replay = honour_replay

    def init_weights_and_state(self, input_signature: Any) -> None:
        self.weights, self.state = (), xnp.ones(input_signature.shape[-1:], xnp.float32)

    def forward(self, x: Any) -> Any:
        if self._honour_replay and tl.is_replaying():
            sign = self.state
        else:
            heads = fastmath.random.bernoulli(self.rng, 0.5, x.shape[-1:])
            sign = xnp.where(heads, 1.0, -1.0).astype(x.dtype)       # [d]
        self.state = sign
        return x * sign


def _init(model: tl.Layer, x: Any) -> tuple[Any, Any]:
    return model.init(shapes.signature(x), rng=fastmath.random.get_prng(0))


def _init_float64(model: tl.Layer, x: tuple) -> tuple[Any, Any, tuple]:
    """Weights, state and inputs in float64 for the JAX gradient checks (initialized on NumPy)."""
    with fastmath.use_backend('numpy'):
        w, s = _init(model, x)
    return helpers.to_float64(w), s, tuple(helpers.to_float64(list(x)))


def _two_streams(seed: int = 0) -> tuple:
    return floats(2, 3, D, seed=seed), floats(2, 3, D, seed=seed + 1)   # [B, L, d] each


# ---- reverse(forward(x)) == x -------------------------------------------------------------------
@pytest.mark.parametrize('n_blocks, mode, dropout', [(1, 'eval', 0.0), (3, 'train', 0.5)])
def test_reverse_recovers_inputs(backend_name, n_blocks, mode, dropout):
    model = tl.ReversibleSerial([revnet_block(D, D_FF, mode, dropout) for _ in range(n_blocks)])
    assert len(model.sublayers) == 4 * n_blocks
    x = _two_streams()
    w, s = _init(model, x)
    y, new_s = model.pure_fn(x, w, s, RNG)
    assert np.abs(np.asarray(y[1]) - x[1]).max() > 0.1     # the stack really changed its inputs
    helpers.assert_trees_close(model.reverse(y, w, s, new_s, RNG), x, atol=1e-5, rtol=1e-5)


def test_block_computes_revnet_equations(backend_name):
    model = tl.ReversibleSerial(revnet_block(D, D_FF))
    x1, x2 = _two_streams()
    w, s = _init(model, (x1, x2))
    y1, y2 = model.pure_fn((x1, x2), w, s, RNG)[0]
    f, g = model.sublayers[0].residual, model.sublayers[2].residual
    expected_y1 = x1 + f.pure_fn(x2, w[0][0], s[0][0], RNG)[0]          # y1 = x1 + F(x2)
    expected_y2 = x2 + g.pure_fn(expected_y1, w[2][0], s[2][0], RNG)[0]  # y2 = x2 + G(y1)
    helpers.assert_trees_close((y1, y2), (expected_y1, expected_y2), atol=1e-6)


def test_select_and_swap_permute_and_invert(backend_name):
    a, b, c = floats(2, 1), floats(2, 2, seed=1), floats(2, 3, seed=2)
    select = tl.ReversibleSelect([2, 0, 1])
    y = select((a, b, c))
    assert [v.shape for v in y] == [(2, 3), (2, 1), (2, 2)]
    helpers.assert_trees_close(select.reverse(y), (a, b, c), atol=0)
    _, (ct, w_ct) = select.reverse_and_grad(y, (c * 2, a * 2, b * 2))
    helpers.assert_trees_close(ct, (a * 2, b * 2, c * 2), atol=0)
    assert w_ct == ()
    swap = tl.ReversibleSwap()
    assert (swap.name, swap.n_in, swap.n_out) == ('ReversibleSwap', 2, 2)
    helpers.assert_trees_close(swap((a, b)), (b, a), atol=0)


# ---- custom gradients == autodiff through the plain twin (float64) ------------------------------
def _dropout_stack():
    return tl.ReversibleSerial([revnet_block(D, D_FF, 'train', 0.5) for _ in range(2)])


def _random_sign_stack():
    return tl.ReversibleSerial(
        tl.ReversibleHalfResidual(tl.Dense(D), RandomSign(), tl.Dense(D)), tl.ReversibleSwap(),
        tl.ReversibleHalfResidual(tl.LayerNorm(), RandomSign(), tl.Dropout(0.5, mode='train'),
                                  tl.Dense(D)),
        tl.ReversibleSwap())


def _default_reverse_and_grad_stack():
    return tl.ReversibleSerial(revnet_block(D, D_FF), ExpScale(), revnet_block(D, D_FF))


def _three_stream_stack():
    # [acc, a, b] -> [acc + Dense(a + b), a, b], rotated so each stream is updated in turn.
    return tl.ReversibleSerial([[tl.ReversibleHalfResidual(tl.Add(), tl.Dense(D)),
                                 tl.ReversibleSelect([1, 2, 0])] for _ in range(3)])


def _sparse_ff_stack():
    # Its Gumbel choices and quantize coin are kept in state and replayed in the backward.
    return tl.ReversibleSerial(
        tl.ReversibleHalfResidual(tl.LayerNorm(), tl.SparseFF(
            d_ff=D_FF, n_elements_in_block=4, quant_prob=0.5, mode='train')),
        tl.ReversibleSwap())


STACKS = {'dropout': (_dropout_stack, 2), 'random_sign': (_random_sign_stack, 2),
          'default_reverse_and_grad': (_default_reverse_and_grad_stack, 2),
          'three_streams': (_three_stream_stack, 3), 'sparse_ff': (_sparse_ff_stack, 2)}


def _loss_and_grads(layer: tl.Layer, w: Any, s: Any, x: tuple, rng: Any) -> tuple[Any, Any]:
    projections = [np.random.default_rng(7 + i).normal(size=a.shape) for i, a in enumerate(x)]

    def loss(params):
        weights, xs = params
        ys, _ = layer.pure_fn(tuple(xs), weights, s, rng)
        return sum((y * p).sum() for y, p in zip(ys, projections))

    params = (w, list(x))
    return loss, jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize('stack', sorted(STACKS))
def test_gradients_equal_autodiff_through_plain_twin(stack):
    make, n_streams = STACKS[stack]
    model = make()
    x32 = tuple(floats(2, 3, D, seed=i) for i in range(n_streams))
    w, s, x = _init_float64(model, x32)
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        loss, grads = _loss_and_grads(model, w, s, x, RNG)
        _, twin_grads = _loss_and_grads(autodiff_twin(model), w, s, x, RNG)
        assert 'custom_vjp' in str(jax.make_jaxpr(jax.grad(loss))((w, list(x))))
    assert helpers.tree_structure(grads) == helpers.tree_structure(twin_grads)
    assert all(np.isfinite(g).all() for g in tree_leaves(grads))
    assert max(np.abs(g).max() for g in tree_leaves(grads)) > 1e-3
    helpers.assert_trees_close(grads, twin_grads, atol=1e-10, rtol=1e-5, msg=stack)


def test_dropout_replay_uses_the_forward_rng():
    # The rng matters (dropout is active), so equal gradients above mean the masks were replayed.
    model = tl.ReversibleSerial(revnet_block(D, D_FF, 'train', 0.5))
    w, s, x = _init_float64(model, _two_streams())
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        forward, backward = jax.jit(model.pure_fn), jax.jit(model.reverse_and_grad)
        y, new_s = forward(x, w, s, RNG)
        y_other, _ = forward(x, w, s, OTHER_RNG)
        assert np.abs(np.asarray(y[1]) - np.asarray(y_other[1])).max() > 1e-3
        ct = tuple(np.ones_like(np.asarray(a)) for a in y)
        _, (x_ct, _) = backward(y, ct, w, s, new_s, RNG)
        _, (x_ct_wrong, _) = backward(y, ct, w, s, new_s, OTHER_RNG)
    assert np.abs(np.asarray(x_ct[0]) - np.asarray(x_ct_wrong[0])).max() > 1e-3


# ---- discrete choices kept in state are replayed ------------------------------------------------
def _sign_block(honour_replay: bool) -> tl.Layer:
    return tl.ReversibleSerial(
        tl.ReversibleHalfResidual(tl.Dense(D), RandomSign(honour_replay), tl.Dense(D)),
        tl.ReversibleSwap())


def test_replay_takes_choices_from_state_not_rng(backend_name):
    x = _two_streams()
    model, control = _sign_block(True), _sign_block(False)
    w, s = _init(model, x)
    y, new_s = model.pure_fn(x, w, s, RNG)
    # Reversing with another rng: exact only because the signs come from new_s.
    helpers.assert_trees_close(model.reverse(y, w, s, new_s, OTHER_RNG), x, atol=1e-5)
    # The control layer draws its signs again from the (wrong) rng and fails to reconstruct.
    y_control, new_s_control = control.pure_fn(x, w, s, RNG)
    helpers.assert_trees_close(y_control, y, atol=0)
    x_control = control.reverse(y_control, w, s, new_s_control, OTHER_RNG)
    assert np.abs(np.asarray(x_control[1]) - x[0]).max() > 0.1


def test_replayed_choices_give_the_forward_gradient():
    model = _sign_block(True)
    w, s, x = _init_float64(model, _two_streams())
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        y, new_s = model.pure_fn(x, w, s, RNG)
        ct = tuple(np.random.default_rng(3).normal(size=a.shape) for a in x)
        # The backward gets another rng: the signs must come from new_s.
        x_rec, (x_ct, w_ct) = model.reverse_and_grad(y, ct, w, s, new_s, OTHER_RNG)
        twin = autodiff_twin(model)
        _, twin_vjp = jax.vjp(lambda w_, x_: twin.pure_fn(x_, w_, s, RNG)[0], w, x)
        twin_w_ct, twin_x_ct = twin_vjp(ct)
    helpers.assert_trees_close(x_rec, x, atol=1e-12)
    helpers.assert_trees_close((x_ct, w_ct), (twin_x_ct, twin_w_ct), atol=1e-10, rtol=1e-5)


# ---- errors -------------------------------------------------------------------------------------
def test_bad_hyper_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r'not reversible: \[1\] Dense_3, \[2\] Relu'):
        tl.ReversibleSerial(tl.ReversibleSwap(), tl.Dense(3), tl.Relu())
    with pytest.raises(ValueError, match=r'permutation of 0..n-1 .*got \[0, 0\]'):
        tl.ReversibleSelect([0, 0])
    with pytest.raises(ValueError, match='must return one item .* they return 2'):
        tl.ReversibleHalfResidual(tl.Dup())

    class NoReverse(tl.ReversibleLayer):
        def forward(self, x):
            return x
    with pytest.raises(TypeError, match='NoReverse is a ReversibleLayer but defines no reverse'):
        NoReverse().reverse(floats(2))


def test_residual_of_wrong_shape_names_the_layer(backend_name):
    model = tl.ReversibleSerial(tl.ReversibleSwap(), tl.ReversibleHalfResidual(tl.Dense(5)))
    with pytest.raises(tl.LayerError, match=r"ReversibleSerial\[1\]/ReversibleHalfResidual: .*"
                                            r"accumulator's shape \(2, 3, 4\), got \(2, 3, 5\)"):
        _init(model, _two_streams())


def test_numpy_backend_reverses_but_gradients_need_jax():
    with fastmath.use_backend('numpy'):
        model = tl.ReversibleSerial(revnet_block(D, D_FF))
        x = _two_streams()
        w, s = _init(model, x)
        y, new_s = model.pure_fn(x, w, s, RNG)
        with pytest.raises(fastmath.BackendError, match='needs the JAX backend'):
            model.reverse_and_grad(y, y, w, s, new_s, RNG)


# ---- memory -------------------------------------------------------------------------------------
def _memory_benchmark():
    path = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'reversible_memory.py'
    spec = importlib.util.spec_from_file_location('reversible_memory', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_activation_memory_stays_flat_in_depth():
    bench = _memory_benchmark()
    size = dict(batch=2, length=128, d_model=64, d_ff=128)
    temp = {(depth, reversible): bench.grad_temp_bytes(depth, reversible, **size)
            for depth in (2, 8) for reversible in (False, True)}
    plain_growth = temp[8, False] - temp[2, False]
    reversible_growth = temp[8, True] - temp[2, True]
    assert temp[8, True] < 0.3 * temp[8, False], temp
    assert reversible_growth < 0.1 * plain_growth, temp
    # Flat: not even one more [B, L, d] buffer for 6 more blocks (before fastmath.after_cotangent
    # XLA:CPU hoisted the recomputes into the forward pass: docs/RESULTS.md, section 2).
    activation = size['batch'] * size['length'] * size['d_model'] * 4
    assert reversible_growth < activation // 4, temp
