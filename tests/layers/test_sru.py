"""SRU: the recurrence against a plain loop, predict == eval token by token (jitted), NumPy == JAX."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl

X = np.random.default_rng(0).normal(size=(2, 7, 4)).astype(np.float32)


def _reference(x, kernel, bias):
    """The SRU equations, one position at a time, in float64."""
    x, kernel, bias = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    n = x.shape[-1]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))                    # noqa: E731
    c, out = np.zeros((x.shape[0], n)), []
    for t in range(x.shape[1]):
        g = x[:, t] @ kernel + bias
        r, f, y = sigmoid(g[:, :n]), sigmoid(g[:, n:2 * n]), g[:, 2 * n:]
        c = f * c + (1 - f) * y
        out.append(r * c + (1 - r) * x[:, t] * np.sqrt(3))
    return np.stack(out, 1)


def test_sru_equals_the_equations(backend_name):
    sru = tl.SRU(4, mode='eval')
    w, s = sru.init(shapes.signature(X), rng=fastmath.random.get_prng(1))
    w = (w[0], np.asarray(w[1]) + 0.3)                           # a nonzero bias
    y, _ = sru.pure_fn(X, w, s)
    np.testing.assert_allclose(np.asarray(y), _reference(X, *w), atol=1e-5, rtol=1e-5)


def test_sru_predict_equals_eval_with_every_call_jitted(backend_name):
    ev, pr = tl.SRU(4, mode='eval'), tl.SRU(4, mode='predict')
    w, s = ev.init(shapes.signature(X), rng=fastmath.random.get_prng(2))
    full, _ = ev.pure_fn(X, w, s)
    _, state = pr.init(shapes.signature(X[:, :1]))
    run = fastmath.jit(pr.pure_fn) if backend_name == 'jax' else pr.pure_fn
    outs, t = [], 0
    for size in (3, 1, 1, 2):                                    # a prefix, steps, two tokens
        y, state = run(X[:, t:t + size], w, state)
        outs.append(np.asarray(y))
        t += size
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), atol=1e-5)
    assert not np.any(np.asarray(pr.init(shapes.signature(X[:, :1]))[1]))  # starts at zero


def test_sru_rejects_a_width_other_than_n_units():
    with pytest.raises(tl.LayerError, match=r'SRU_4 expects x \[batch, length, 4\]'):
        tl.SRU(4).init(shapes.ShapeDtype((2, 3, 5)))
    with pytest.raises(ValueError, match='n_units must be a positive integer'):
        tl.SRU(0)


def test_masked_sru_ignores_padding_in_front(backend_name):
    sru = tl.SRU(4, masked=True, mode='eval')
    padded = np.concatenate([np.full((2, 3, 4), 5.0, np.float32), X], axis=1)   # junk in front
    mask = np.concatenate([np.zeros((2, 3), bool), np.ones((2, 7), bool)], axis=1)
    w, s = sru.init(shapes.signature((padded, mask)), rng=fastmath.random.get_prng(3))
    (y_padded, m), _ = sru.pure_fn((padded, mask), w, s)
    (y_plain, _), _ = sru.pure_fn((X, np.ones((2, 7), bool)), w, s)
    np.testing.assert_allclose(np.asarray(y_padded)[:, 3:], np.asarray(y_plain), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(m), mask)
