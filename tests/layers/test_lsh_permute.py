"""lsh.permute: permutation gathers whose gradient is the gather by the inverse (no scatter)."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.lsh.permute import gather_rounds, inverse_permutation, permute

B, H, R, L, D = 2, 3, 2, 7, 4


def _perms(seed=0):
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(L) for _ in range(B * H * R)]).reshape(B, H, R, L)
    return perm.astype(np.int32)


@pytest.mark.parametrize('backend_name', ['numpy', 'jax'])
def test_values_equal_take_along_axis(backend_name):
    perm = _perms()
    x = np.random.default_rng(1).normal(size=(B, H, L, D)).astype(np.float32)
    xr = np.random.default_rng(2).normal(size=(B, H, R, L, D)).astype(np.float32)
    with fastmath.use_backend(backend_name):
        inverse = np.asarray(inverse_permutation(perm))
        gathered = np.asarray(gather_rounds(x, perm, inverse))
        permuted = np.asarray(permute(xr, perm, inverse))
        permuted_2d = np.asarray(permute(xr[..., 0], perm, inverse))
    np.testing.assert_array_equal(np.take_along_axis(perm, inverse, -1),
                                  np.broadcast_to(np.arange(L), perm.shape))
    np.testing.assert_array_equal(gathered, np.take_along_axis(x[:, :, None], perm[..., None], 3))
    np.testing.assert_array_equal(permuted, np.take_along_axis(xr, perm[..., None], 3))
    np.testing.assert_array_equal(permuted_2d, np.take_along_axis(xr[..., 0], perm, 3))


def test_gradients_equal_autodiff_of_take_along_axis():
    perm = _perms(3)
    x = np.random.default_rng(4).normal(size=(B, H, L, D))
    xr = np.random.default_rng(5).normal(size=(B, H, R, L, D))
    w1 = np.random.default_rng(6).normal(size=(B, H, R, L, D))

    def custom(x, xr):
        inverse = inverse_permutation(perm)
        return (gather_rounds(x, perm, inverse) * w1).sum() + \
            (permute(xr, perm, inverse) * w1).sum() ** 2

    def plain(x, xr):
        return (xnp.take_along_axis(x[:, :, None], perm[..., None], 3) * w1).sum() + \
            (xnp.take_along_axis(xr, perm[..., None], 3) * w1).sum() ** 2
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        got = jax.jit(jax.grad(custom, argnums=(0, 1)))(x, xr)
        want = jax.jit(jax.grad(plain, argnums=(0, 1)))(x, xr)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-12)


def test_backward_has_no_scatter():
    perm = _perms(7)
    x = np.ones((B, H, L, D), np.float32)

    def loss(x):
        inverse = inverse_permutation(perm)
        return permute(gather_rounds(x, perm, inverse), inverse, perm).sum()
    with fastmath.use_backend('jax'):
        hlo = jax.jit(jax.grad(loss)).lower(x).as_text()
    assert 'scatter' not in hlo
