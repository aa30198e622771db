"""Keyed RNG: the same key gives the same numbers on each backend; different keys differ."""
import numpy as np
import pytest

from trax_sparse import fastmath

DRAWS = {
    'uniform': lambda r, k: r.uniform(k, (64,)),
    'normal': lambda r, k: r.normal(k, (64,)),
    'bernoulli': lambda r, k: r.bernoulli(k, 0.5, (64,)),
    'gumbel': lambda r, k: r.gumbel(k, (64,)),
    'randint': lambda r, k: r.randint(k, (64,), 0, 1000),
}


@pytest.mark.parametrize('draw', sorted(DRAWS))
def test_same_key_same_numbers_different_keys_differ(backend_name, draw):
    r = fastmath.random
    k0, k1 = r.get_prng(0), r.get_prng(1)
    a, b, c = (np.asarray(DRAWS[draw](r, k)) for k in (k0, k0, k1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_and_fold_in_are_deterministic_and_distinct(backend_name):
    r = fastmath.random
    key = r.get_prng(42)
    s1, s2 = np.asarray(r.split(key, 3)), np.asarray(r.split(key, 3))
    np.testing.assert_array_equal(s1, s2)
    assert s1.shape == (3, 2) and s1.dtype == np.uint32
    assert len({tuple(k) for k in s1}) == 3
    f1, f2 = np.asarray(r.fold_in(key, 1)), np.asarray(r.fold_in(key, 2))
    assert not np.array_equal(f1, f2)
    np.testing.assert_array_equal(f1, np.asarray(r.fold_in(key, 1)))
    # Keys derived by split draw different numbers from the parent key.
    assert not np.array_equal(np.asarray(r.uniform(key, (8,))), np.asarray(r.uniform(s1[0], (8,))))


def test_keys_cross_backends():
    """A key made on one backend is a valid key on the other (both are uint32[2])."""
    with fastmath.use_backend('jax'):
        jax_key = fastmath.random.get_prng(7)
    with fastmath.use_backend('numpy'):
        np_key = fastmath.random.get_prng(7)
        draw = fastmath.random.uniform(np.asarray(jax_key), (4,))
    assert np.asarray(jax_key).shape == np_key.shape == (2,)
    assert draw.shape == (4,) and np.all((draw >= 0) & (draw < 1))


def test_distributions_have_the_right_moments(backend_name):
    r = fastmath.random
    key = r.get_prng(3)
    u = np.asarray(r.uniform(key, (20000,), minval=-2.0, maxval=2.0))
    n = np.asarray(r.normal(key, (20000,)))
    g = np.asarray(r.gumbel(key, (20000,)))
    b = np.asarray(r.bernoulli(key, 0.25, (20000,)))
    assert u.min() >= -2 and u.max() < 2 and abs(u.mean()) < 0.05
    assert abs(n.mean()) < 0.05 and abs(n.std() - 1) < 0.05
    assert abs(g.mean() - 0.5772) < 0.05          # Euler–Mascheroni constant
    assert abs(b.mean() - 0.25) < 0.02
    assert u.dtype == n.dtype == np.float32


@pytest.mark.parametrize('seed', [0, 42, 2**31 + 5])
def test_split_and_fold_in_equal_jax_bit_for_bit(seed):
    """Threefry on both backends: keys derived on NumPy are JAX's keys."""
    with fastmath.use_backend('jax'):
        key = np.asarray(fastmath.random.get_prng(seed))
        jax_split = np.asarray(fastmath.random.split(key, 5))
        jax_folds = [np.asarray(fastmath.random.fold_in(key, d)) for d in (0, 1, 12345)]
    with fastmath.use_backend('numpy'):
        np.testing.assert_array_equal(fastmath.random.split(key, 5), jax_split)
        for d, expected in zip((0, 1, 12345), jax_folds):
            np.testing.assert_array_equal(fastmath.random.fold_in(key, d), expected)
