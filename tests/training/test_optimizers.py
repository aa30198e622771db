"""Optimizers (optax, with the paper's Adafactor settings) and learning-rate schedules."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trax_sparse import fastmath
from trax_sparse import training


def _run(tx, params, grads_fn, n_steps):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads_fn(params), state, params)
        return optax.apply_updates(params, updates), state

    state = jax.jit(tx.init)(params)
    for _ in range(n_steps):
        params, state = step(params, state)
    return params, state


def test_multifactor_is_constant_times_warmup_times_rsqrt():
    schedule = training.multifactor('constant * linear_warmup * rsqrt_decay', constant=2.0,
                                    warmup_steps=100)
    with fastmath.use_backend('numpy'):
        for step in (1, 50, 100, 400, 1600):
            expected = 2.0 * min(1.0, step / 100) / math.sqrt(max(step, 100))
            assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)


def test_warmup_and_rsqrt_decay_peaks_at_max_value():
    schedule = training.warmup_and_rsqrt_decay(n_warmup_steps=10, max_value=0.5)
    with fastmath.use_backend('numpy'):
        values = [float(schedule(s)) for s in (5, 10, 40)]
    np.testing.assert_allclose(values, [0.25, 0.5, 0.25], rtol=1e-6)


def test_schedule_traced_under_jit_equals_python():
    schedule = training.multifactor(constant=0.3, warmup_steps=8)
    with fastmath.use_backend('jax'):
        traced = jax.jit(schedule)(jnp.arange(1, 20))
        python = [float(schedule(s)) for s in range(1, 20)]
    np.testing.assert_allclose(np.asarray(traced), python, rtol=1e-6)


def test_unknown_schedule_factor_is_named():
    with pytest.raises(ValueError, match="unknown factor.*'linear_warmpu'"):
        training.multifactor('constant * linear_warmpu')


def test_optimizer_reads_schedule_at_step_count_plus_one():
    # SGD with lr(step) = 0.1 * step and unit gradients: updates -0.1, then -0.2.
    tx = training.SGD().transform(lambda step: 0.1 * step)
    with fastmath.use_backend('jax'):
        params, _ = _run(tx, jnp.zeros(3), lambda p: jnp.ones(3), 2)
    np.testing.assert_allclose(params, -0.3 * np.ones(3), rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    # Bias-corrected first Adam step: -lr * g / (|g| + eps).
    tx = training.Adam(eps=1e-5).transform(training.constant(0.01))
    g = jnp.array([3.0, -0.5, 2.0])
    with fastmath.use_backend('jax'):
        params, _ = _run(tx, jnp.zeros(3), lambda p: g, 1)
    np.testing.assert_allclose(params, -0.01 * np.asarray(g) / (np.abs(g) + 1e-5), rtol=1e-5)


def test_clip_gradient_norm_bounds_the_update():
    tx = training.SGD(clip_gradient_norm=1.0).transform(training.constant(0.5))
    with fastmath.use_backend('jax'):
        params, _ = _run(tx, jnp.zeros(4), lambda p: jnp.array([30.0, 40.0, 0.0, 0.0]), 1)
    np.testing.assert_allclose(params, [-0.3, -0.4, 0.0, 0.0], rtol=1e-5)  # norm 50 -> 1
    with pytest.raises(ValueError, match='clip_gradient_norm must be > 0'):
        training.Adam(clip_gradient_norm=0.0)


def test_adafactor_has_the_paper_settings_and_factored_state():
    params = {'w': jnp.ones((256, 128)) * 0.5, 'b': jnp.zeros(128)}
    key = jax.random.PRNGKey(0)

    def grads(p):
        return jax.tree_util.tree_map(lambda x: jax.random.normal(key, x.shape), p)

    schedule = training.constant(0.01)
    with fastmath.use_backend('jax'):
        ours, state = _run(training.Adafactor().transform(schedule), params, grads, 3)
        reference, _ = _run(optax.adafactor(lambda c: schedule(c + 1), decay_rate=0.8,
                                            clipping_threshold=1.0, momentum=None,
                                            multiply_by_parameter_scale=True, factored=True),
                            params, grads, 3)
    for name in params:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-6)
    factored = state[0]  # scale_by_factored_rms: row/column second moments for the matrix
    assert {factored.v_row['w'].shape, factored.v_col['w'].shape} == {(256,), (128,)}
    assert factored.v['w'].size == 1  # no full [256, 128] second moment
    assert factored.v['b'].shape == (128,)  # vectors keep a full second moment
    # Update clipping: with RMS(update) clipped to 1 and parameter scale RMS(w) = 0.5, one step
    # moves w by at most lr * 0.5 per unit of RMS.
    step1, _ = _run(training.Adafactor().transform(schedule), params, grads, 1)
    rms = float(jnp.sqrt(jnp.mean(jnp.square(step1['w'] - params['w']))))
    assert rms <= 0.01 * 0.5 * 1.0001
