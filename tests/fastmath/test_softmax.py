"""fastmath.softmax_with_lse: float32 statistics, its own gradient equals autodiff's."""
import jax
import jax.numpy as jnp
import numpy as np

from trax_sparse import fastmath
from trax_sparse.precision import compute_dtype


def _inputs():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5)).astype(np.float64)
    keep = rng.random((3, 5)) > 0.3
    keep[1] = False                              # a row with every entry filled
    fill = np.where(rng.random((3, 5)) > 0.5, -1e9, -5e4)
    return scores, keep, fill


def _reference(scores, keep, fill):
    s = jnp.where(keep, scores, fill)
    lse = jax.scipy.special.logsumexp(s, axis=-1, keepdims=True)
    return jnp.exp(s - lse), lse


def test_values_match_numpy_and_the_plain_formula():
    scores, keep, fill = _inputs()
    with fastmath.use_backend('numpy'):
        p_np, lse_np = fastmath.softmax_with_lse(scores, keep, fill, scores.dtype)
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        p_jax, lse_jax = fastmath.softmax_with_lse(scores, keep, fill, scores.dtype)
        p_ref, lse_ref = _reference(scores, keep, fill)
    for a, b in ((p_np, p_ref), (p_jax, p_ref), (lse_np, lse_ref), (lse_jax, lse_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_gradient_equals_autodiff_of_the_plain_formula():
    scores, keep, fill = _inputs()
    probe = np.random.default_rng(1).normal(size=scores.shape)
    probe_lse = np.random.default_rng(2).normal(size=scores.shape[:-1] + (1,))

    def objective(fn):
        def value(s):
            p, lse = fn(s)
            return jnp.sum(p * probe) + jnp.sum(lse * probe_lse)
        return value

    with fastmath.use_backend('jax'), jax.enable_x64(True):
        ours = jax.grad(objective(lambda s: fastmath.softmax_with_lse(s, keep, fill, s.dtype)))(
            scores)
        plain = jax.grad(objective(lambda s: _reference(s, keep, fill)))(scores)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(ours)[:, 1] == 0)        # a fully filled row: constant


def test_bfloat16_scores_give_bfloat16_probabilities_and_float32_statistics():
    bf16 = compute_dtype('bfloat16')
    scores = np.random.default_rng(0).normal(size=(2, 7)).astype(bf16)
    for backend in ('numpy', 'jax'):
        with fastmath.use_backend(backend):
            probs, lse = fastmath.softmax_with_lse(scores, None, 0.0, bf16)
        assert np.dtype(probs.dtype) == bf16 and np.dtype(lse.dtype) == np.float32
        np.testing.assert_allclose(np.asarray(probs, np.float32).sum(-1), 1.0, atol=2e-2)
