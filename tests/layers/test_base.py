"""The Layer contract itself: pure_fn, state threading, custom backward, no leaked tracers."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.layers.base import Layer


class _ScaledGrad(Layer):
    """y = x * w; its custom backward returns 3x the true gradients (to prove it is used)."""

    @property
    def has_backward(self):
        return True

    def init_weights_and_state(self, sig):
        self.weights, self.state = (np.full(sig.shape[-1:], 2.0, np.float32),), ()

    def forward(self, x):
        return x * self.weights[0]

    def backward(self, inputs, output, grad, weights, state, new_state, rng):
        return 3 * grad * weights[0], (3 * (grad * inputs).sum(0),)


class _Counter(Layer):
    """Counts calls in its state."""

    def init_weights_and_state(self, sig):
        self.weights, self.state = (), np.zeros((), np.int32)

    def forward(self, x):
        self.state = self.state + 1
        return x


def test_custom_backward_is_used_on_jax():
    layer = _ScaledGrad()
    x = np.array([[1.0, 2.0]], np.float32)
    w, s = layer.init(shapes.signature(x))
    with fastmath.use_backend('jax'):
        gx, gw = jax.grad(lambda x, w: layer.pure_fn(x, w, s)[0].sum(), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(gx), 3 * 2.0 * np.ones((1, 2)))
    np.testing.assert_allclose(np.asarray(gw[0]), 3 * x[0])
    with fastmath.use_backend('numpy'):   # the forward still runs on NumPy
        np.testing.assert_allclose(layer.pure_fn(x, w, s)[0], 2 * x)


def test_pure_fn_threads_state_and_call_keeps_it(backend_name):
    model = tl.Serial(_Counter(), tl.Relu(), _Counter())
    x = np.ones(2, np.float32)
    w, s = model.init(shapes.signature(x))
    _, s1 = model.pure_fn(x, w, s)
    _, s2 = model.pure_fn(x, w, s1)
    assert [int(v) for v in (s2[0], s2[2])] == [2, 2]
    assert int(model.state[0]) == 0          # pure_fn never changes the layer
    model(x)
    model(x)
    assert int(model.state[0]) == 2 and int(model.sublayers[2].state) == 2


def test_jit_leaves_no_tracers_on_the_layer():
    model = tl.Serial(tl.Dense(3), _Counter())
    x = np.ones((1, 2), np.float32)
    w, s = model.init(shapes.signature(x))
    with fastmath.use_backend('jax'):
        jax.jit(model.pure_fn)(x, w, s, np.array([0, 1], np.uint32))
    for layer in (model, *model.sublayers):
        for leaf in fastmath.tree_leaves((layer.weights, layer.state)):
            assert not isinstance(leaf, jax.core.Tracer)


def test_output_signature_does_not_change_an_uninitialized_layer(backend_name):
    model = tl.Serial(tl.Dense(3), tl.Dense(2))
    sig = model.output_signature(shapes.ShapeDtype((4, 5)))
    assert sig == shapes.ShapeDtype((4, 2))
    assert model.weights is None and model.sublayers[0].weights is None


def test_abstract_init_of_a_large_layer_allocates_nothing():
    # 50k x 50k float32 = 10 GB: only possible abstractly (eval_shape on JAX).
    big = tl.Serial(tl.Dense(50_000), tl.Dense(4))
    with fastmath.use_backend('jax'):
        sig = big.output_signature(shapes.ShapeDtype((1, 50_000)))
    assert sig == shapes.ShapeDtype((1, 4))


def test_repr_shows_the_tree():
    text = repr(tl.Serial(tl.Dense(2), tl.Branch(tl.Relu(), None)))
    assert 'Serial_in1_out2[' in text and 'Dense_2_in1_out1' in text and 'Branch_in1_out2' in text


def test_replay_context_flag():
    assert not tl.is_replaying()
    with tl.replay_context():
        assert tl.is_replaying()
    assert not tl.is_replaying()


@pytest.mark.parametrize('mode', ['train', 'eval', 'predict'])
def test_modes_are_validated_and_accepted(mode):
    assert tl.check_mode(mode, 'X') == mode
