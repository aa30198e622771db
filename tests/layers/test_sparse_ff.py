"""SparseFF: predict gather == eval masked dense, one-hot eval mask, straight-through
gradients to the controller, finite differences on the soft path, replayed choices."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.layers import sparse_ff
from tests import helpers
from tests.layers.cases import floats

D, D_FF, N = 8, 16, 4          # 4 blocks of 4 units


def _init(layer, x, seed=0):
    """Weights from the NumPy backend (fast, no JAX compiles); any backend can run them."""
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(x), rng=fastmath.random.get_prng(seed))


def _numpy_reference(x, weights, act=lambda h: np.maximum(h, 0.0)):
    """The eval formula written out in NumPy: act((x W1 + b1) ⊙ onehot(argmax)) W2 + b2."""
    (w_c1, w_c2, b_c), main = helpers.to_numpy(weights)
    w1t, b1, w2, b2 = sparse_ff.split_main(main)
    n_blocks, block, d = w1t.shape
    logits = ((x @ w_c1) @ w_c2 + b_c).reshape(x.shape[:-1] + (n_blocks, block))
    mask = np.eye(block)[np.argmax(logits, axis=-1)]                 # [..., nb, N]
    hidden = (x @ w1t.reshape(-1, d).T).reshape(mask.shape) + (0.0 if b1 is None else b1)
    return act(hidden * mask).reshape(x.shape[:-1] + (-1,)) @ w2.reshape(-1, d) + b2


@pytest.mark.parametrize('prefix', [3, 5])
def test_predict_equals_eval_token_by_token(backend_name, prefix):
    # prefix 3 < N reads gathered rows; prefix 5 >= N takes the masked dense route.
    x = floats(2, 7, D, seed=1)
    make = lambda mode: tl.SparseFF(D_FF, n_elements_in_block=N, mode=mode)
    weights, state = _init(make('eval'), x)
    full, _ = make('eval').pure_fn(x, weights, state)
    predict = make('predict')
    _, p_state = _init(predict, x[:, :prefix])
    steps = [x[:, :prefix]] + [x[:, t:t + 1] for t in range(prefix, x.shape[1])]
    outputs = []
    for step in steps:
        y, p_state = predict.pure_fn(step, weights, p_state)
        outputs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(full, _numpy_reference(x, weights), atol=1e-5, rtol=1e-5)


def test_gather_path_equals_masked_dense_path(backend_name):
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, activation=tl.Gelu, use_bias1=True)
    x = floats(2, 3, D, seed=2)
    (_, main), _ = _init(layer, x)
    choices = np.random.default_rng(0).integers(0, N, size=(2, 3, D_FF // N)).astype(np.int32)
    act = sparse_ff.activation_fn(tl.Gelu, 'test')
    gathered = sparse_ff.gathered_ff(x, choices, main, act)
    mask = sparse_ff.one_hot(choices, N, np.float32)
    dense = sparse_ff.dense_output(sparse_ff.masked_dense_hidden(x, mask, main, act), main)
    np.testing.assert_allclose(gathered, dense, atol=1e-5, rtol=1e-5)


def test_predict_reads_only_the_chosen_rows(backend_name):
    # Poison every unit the controller does not choose: the gather path never reads them.
    x = floats(1, 1, D, seed=3)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, mode='eval')
    weights, state = _init(layer, x)
    expected, (choices, _) = layer.pure_fn(x, weights, state)
    controller, (w1t, w2, b2) = helpers.to_numpy(weights)
    chosen = np.eye(N, dtype=bool)[np.asarray(choices)[0, 0]][..., None]   # [nb, N, 1]
    poisoned = (controller, (np.where(chosen, w1t, np.nan), np.where(chosen, w2, np.nan), b2))
    predict = tl.SparseFF(D_FF, n_elements_in_block=N, mode='predict')
    y, _ = predict.pure_fn(x, poisoned, ())
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_eval_mask_is_one_hot_per_block(backend_name):
    x = floats(2, 5, D, seed=4)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, mode='eval')
    weights, state = _init(layer, x)
    _, (choices, hard) = layer.pure_fn(x, weights, state)
    logits = sparse_ff.controller_logits(x, weights[0], D_FF // N, N)
    np.testing.assert_array_equal(choices, np.argmax(np.asarray(logits), axis=-1))
    assert bool(hard)
    mask = np.asarray(sparse_ff.one_hot(choices, N, np.float32))
    assert mask.shape == (2, 5, D_FF // N, N)
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask.sum(axis=-1), np.ones((2, 5, D_FF // N)))


@pytest.mark.parametrize('quant_prob', [0.0, 1.0], ids=['soft', 'hard'])
def test_train_draws_choices_only_on_hard_calls(backend_name, quant_prob):
    x = floats(2, 5, D, seed=6)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=quant_prob)
    weights, state = _init(layer, x)
    with fastmath.use_backend(backend_name):
        y, (choices, hard) = layer.pure_fn(x, weights, state, fastmath.random.get_prng(5))
    assert bool(hard) == (quant_prob == 1.0) and np.shape(choices) == (2, 5, D_FF // N)
    if not hard:         # the soft mask p: no draw, zeros recorded, the soft formula
        np.testing.assert_array_equal(choices, 0)
        (w_c1, w_c2, b_c), (w1t, w2, b2) = helpers.to_numpy(weights)
        logits = ((x @ w_c1) @ w_c2 + b_c).reshape(2, 5, D_FF // N, N)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        hidden = np.maximum((x @ w1t.reshape(-1, D).T).reshape(p.shape) * p, 0)
        np.testing.assert_allclose(y, hidden.reshape(2, 5, -1) @ w2.reshape(-1, D) + b2,
                                   atol=1e-5, rtol=1e-4)


def _train_loss(layer, x, state, rng, projection):
    def loss(weights):
        y, new_state = layer.pure_fn(x, weights, state, rng)
        return (y * projection).sum(), new_state
    return loss


@pytest.mark.parametrize('quant_prob', [1.0, 0.0], ids=['straight_through', 'soft'])
def test_train_gradients_reach_the_controller(quant_prob):
    x, projection = floats(2, 3, D, seed=5), floats(2, 3, D, seed=6)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=quant_prob, mode='train')
    weights, state = _init(layer, x)
    with fastmath.use_backend('jax'):
        loss = _train_loss(layer, x, state, fastmath.random.get_prng(7), projection)
        grads, (choices, hard) = jax.jit(jax.grad(loss, has_aux=True))(weights)
    assert bool(hard) == (quant_prob == 1.0)
    for name, g in zip(('W_c1', 'W_c2', 'b_c'), grads[0]):
        assert np.all(np.isfinite(g)) and np.abs(np.asarray(g)).max() > 1e-6, name
    if quant_prob == 1.0:
        # Forward value of the straight-through mask is exactly the one-hot of the choices,
        # so the main weights get the gradient of the masked dense block with that mask.
        mask = sparse_ff.one_hot(np.asarray(choices), N, np.float32)
        act = sparse_ff.activation_fn(tl.Relu, 'test')

        def fixed_mask_loss(main):
            with fastmath.use_backend('jax'):
                hidden = sparse_ff.masked_dense_hidden(x, mask, main, act)
                return (sparse_ff.dense_output(hidden, main) * projection).sum()
        helpers.assert_trees_close(grads[1], jax.jit(jax.grad(fixed_mask_loss))(weights[1]),
                                   atol=1e-5, rtol=1e-4)


def test_soft_mask_path_finite_differences():
    x = floats(2, 2, D, seed=8)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=0.0, use_bias1=True,
                        activation=tl.Gelu, mode='train')
    weights, state = _init(layer, x)
    projection = floats(2, 2, D, seed=9)
    rng = np.array([0, 11], np.uint32)

    def loss(params):
        w, inputs = params
        y, _ = layer.pure_fn(inputs, w, state, rng)
        return (y * projection).sum()
    assert helpers.check_grads_fd(jax.jit(loss), (weights, x), n_probes=3) > 0


def test_replay_reuses_the_recorded_choices(backend_name):
    x = floats(2, 3, D, seed=10)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, temperature=10.0, quant_prob=1.0)
    weights, state = _init(layer, x)
    rng1, rng2 = fastmath.random.get_prng(1), fastmath.random.get_prng(2)
    # On JAX: jitted, and the replay is traced inside the replay context (its own jit).
    compile_ = jax.jit if backend_name == 'jax' else (lambda f: f)
    forward = compile_(layer.pure_fn)
    y1, recorded = forward(x, weights, state, rng1)
    _, fresh = forward(x, weights, state, rng2)
    assert not np.array_equal(fresh[0], recorded[0])          # new noise, new choices
    with tl.replay_context():
        replay = compile_(lambda *args: layer.pure_fn(*args))
        y_replay, replayed = replay(x, weights, recorded, rng2)
    np.testing.assert_array_equal(replayed[0], recorded[0])
    np.testing.assert_allclose(y_replay, y1, atol=1e-6)


def test_parameter_count_matches_formula():
    d, d_ff, n = 12, 48, 8
    with fastmath.use_backend('numpy'):
        for use_bias1, d_lowrank in ((False, None), (True, 5)):
            layer = tl.SparseFF(d_ff, n_elements_in_block=n, d_lowrank=d_lowrank,
                                use_bias1=use_bias1)
            weights, _ = layer.init(shapes.ShapeDtype((1, 1, d)))
            r = d_ff // n if d_lowrank is None else d_lowrank
            controller = d * r + r * d_ff + d_ff
            main = 2 * d * d_ff + d + (d_ff if use_bias1 else 0)
            assert sum(w.size for w in fastmath.tree_leaves(weights)) == controller + main
            # Per token the predict path reads the controller and 2·d·d_ff/N main weights.
            assert 2 * d * (d_ff // n) == 2 * d * layer.n_blocks


def test_kernel_scaling_starts_w2_sqrt_n_larger():
    x = floats(2, 3, D, seed=4)
    plain, _ = _init(tl.SparseFF(D_FF, n_elements_in_block=N, mode='eval'), x)
    scaled, _ = _init(tl.SparseFF(D_FF, n_elements_in_block=N, kernel_scaling=True,
                                  mode='eval'), x)
    (c_plain, (w1_plain, w2_plain, b2_plain)), (c_scaled, (w1, w2, b2)) = plain, scaled
    np.testing.assert_allclose(w2, np.sqrt(N) * w2_plain, rtol=1e-6)
    for a, b in zip(fastmath.tree_leaves((c_plain, w1_plain, b2_plain)),
                    fastmath.tree_leaves((c_scaled, w1, b2))):
        np.testing.assert_array_equal(a, b)                       # everything else as before


def test_errors_name_the_layer_and_what_was_expected():
    with pytest.raises(ValueError, match=r'SparseFF: d_ff=30 must be divisible by '
                                         r'n_elements_in_block=4'):
        tl.SparseFF(30, n_elements_in_block=4)
    with pytest.raises(ValueError, match='SparseFF: the activation must map 0 to 0'):
        tl.SparseFF(8, n_elements_in_block=4, activation=lambda h: h + 1.0)
    with pytest.raises(ValueError, match='SparseFF: quant_prob must be in'):
        tl.SparseFF(8, n_elements_in_block=4, quant_prob=1.5)
    with pytest.raises(ValueError, match="SparseFF: mode must be one of"):
        tl.SparseFF(8, n_elements_in_block=4, mode='decode')
    with fastmath.use_backend('numpy'):
        layer = tl.SparseFF(8, n_elements_in_block=4, mode='eval')
        weights, state = layer.init(shapes.ShapeDtype((2, 6)))
        with pytest.raises(tl.LayerError, match=r'SparseFF_8.*expected input with last axis 6'):
            layer.pure_fn(np.ones((2, 5), np.float32), weights, state)
        with tl.replay_context(), pytest.raises(tl.LayerError, match='replaying needs recorded'):
            layer.pure_fn(np.ones((3, 6), np.float32), weights, state)


def test_train_choices_follow_softmax_over_temperature(backend_name):
    # argmax(log p + τ·g) with Gumbel g is a draw from softmax(logits / τ): the sampler
    # (one uniform per block, inverse CDF) must give that law.
    logits = np.array([0.0, 0.1, -0.2, 0.3], np.float32)
    tau = 0.5
    draws = np.broadcast_to(logits, (20000, 1, 4))
    choices = np.asarray(sparse_ff.gumbel_choices(draws, tau, fastmath.random.get_prng(3)))
    expected = np.exp(logits / tau) / np.exp(logits / tau).sum()
    frequencies = np.bincount(choices.reshape(-1), minlength=4) / choices.size
    np.testing.assert_allclose(frequencies, expected, atol=0.015)
    argmax = sparse_ff.gumbel_choices(draws[:2], 0.0, fastmath.random.get_prng(3))
    np.testing.assert_array_equal(np.asarray(argmax), 3)


def test_mask_after_activation_gives_every_unit_its_gradient():
    """With a one-hot mask, act((x W1) ⊙ mask) (Trax) passes no gradient to the mask of a
    unit left out (ReLU's slope at 0 is 0); act(x W1) ⊙ mask passes act(x W1)·∂L/∂hidden,
    with the same forward value."""
    x, upstream = floats(3, D, seed=20), floats(3, D_FF, seed=21)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N)
    weights, _ = _init(layer, x)
    main, act = weights[1], sparse_ff.activation_fn(tl.Relu, 'test')
    mask = sparse_ff.one_hot(np.array([[0, 1, 2, 3]] * 3, np.int32), N, np.float32)
    with fastmath.use_backend('jax'):
        def hidden(m, after):
            return sparse_ff.masked_dense_hidden(x, m, main, act, after)
        grads = [jax.grad(lambda m, a=after: (hidden(m, a) * upstream).sum())(mask)
                 for after in (False, True)]
        np.testing.assert_array_equal(hidden(mask, False), hidden(mask, True))
    w1t = np.asarray(main[0])
    pre = (x @ w1t.reshape(-1, D).T).reshape(3, D_FF // N, N)          # x W1, [T, nb, N]
    left_out = mask == 0
    np.testing.assert_array_equal(np.asarray(grads[0])[left_out], 0.0)
    expected = np.maximum(pre, 0) * upstream.reshape(pre.shape)
    np.testing.assert_allclose(grads[1], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected[left_out]).max() > 0.1


@pytest.mark.parametrize('quant_prob', [1.0, 0.0], ids=['straight_through', 'soft'])
def test_mask_after_activation_changes_only_the_controller_gradient(quant_prob):
    """Same outputs and main-weight gradients as Trax's formula (ReLU: act(h p) = act(h) p
    for p >= 0); the controller's gradient differs only when the mask is one-hot."""
    x, projection = floats(2, 3, D, seed=22), floats(2, 3, D, seed=23)
    results = []
    for after in (False, True):
        layer = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=quant_prob,
                            mask_after_activation=after, mode='train')
        weights, state = _init(layer, x)
        with fastmath.use_backend('jax'):
            loss = _train_loss(layer, x, state, fastmath.random.get_prng(7), projection)
            results.append((loss(weights)[0],) + jax.jit(jax.grad(loss, has_aux=True))(weights))
    (loss_trax, grads_trax, _), (loss_after, grads_after, _) = results
    np.testing.assert_allclose(loss_trax, loss_after, rtol=1e-6)
    helpers.assert_trees_close(grads_trax[1], grads_after[1], atol=1e-6, rtol=1e-5)
    controller_change = max(np.abs(np.asarray(a) - np.asarray(b)).max()
                            for a, b in zip(grads_trax[0], grads_after[0]))
    assert (controller_change > 1e-3) == (quant_prob == 1.0), controller_change


def test_straight_through_gradients_equal_trax_formula():
    """With Trax's option (mask_after_activation=False) the training gradients (every
    weight) equal Trax's formula written out: relu = where(mid <= 0, 0, mid) of
    mid = (x W1) ⊙ (onehot + p − sg(p)), whose slope at 0 is 0."""
    x, projection = floats(2, 3, D, seed=24), floats(2, 3, D, seed=25)
    layer = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=1.0,
                        mask_after_activation=False, mode='train')
    weights, state = _init(layer, x)
    jnp = jax.numpy
    with fastmath.use_backend('jax'):
        loss = _train_loss(layer, x, state, fastmath.random.get_prng(7), projection)
        grads, (choices, _) = jax.jit(jax.grad(loss, has_aux=True))(weights)

    def trax_loss(w):
        (w_c1, w_c2, b_c), (w1t, w2, b2) = w
        logits = ((x @ w_c1) @ w_c2 + b_c).reshape(2, 3, D_FF // N, N)
        p = jax.nn.softmax(logits, axis=-1)
        onehot = jax.nn.one_hot(choices, N)
        mid = (x @ w1t.reshape(-1, D).T).reshape(p.shape) * (
            onehot + p - jax.lax.stop_gradient(p))
        relu = jnp.where(mid <= 0, jnp.zeros_like(mid), mid).reshape(2, 3, D_FF)
        return ((relu @ w2.reshape(-1, D) + b2) * projection).sum()
    helpers.assert_trees_close(grads, jax.grad(trax_loss)(weights), atol=1e-5, rtol=1e-4)
