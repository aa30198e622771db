"""Test helpers: tree comparisons, backend conversion, finite-difference gradients."""
from typing import Any, Callable

import jax
import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse.fastmath import tree_leaves, tree_map, tree_structure


def to_numpy(tree: Any) -> Any:
    return tree_map(np.asarray, tree)


def to_float64(tree: Any) -> Any:
    """Float leaves -> float64 numpy (int leaves untouched)."""
    def cast(a):
        a = np.asarray(a)
        return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a
    return tree_map(cast, tree)


def assert_trees_close(a: Any, b: Any, atol: float = 1e-5, rtol: float = 1e-5, msg: str = ''):
    assert tree_structure(a) == tree_structure(b), f'{msg}: structures differ'
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64) if np.asarray(x).dtype != bool else x,
                                   np.asarray(y, np.float64) if np.asarray(y).dtype != bool else y,
                                   atol=atol, rtol=rtol, err_msg=msg)


def float_leaf_indices(tree: Any) -> list[int]:
    return [i for i, a in enumerate(tree_leaves(tree))
            if np.issubdtype(np.asarray(a).dtype, np.floating) and np.asarray(a).size]


def check_grads_fd(f: Callable[[Any], Any], params: Any, n_probes: int = 6, eps: float = 1e-6,
                   rtol: float = 1e-4, atol: float = 1e-7, seed: int = 0) -> int:
    """Compares jax.grad(f) with central differences at a few random coordinates.

    `f` maps a tree of float64 arrays to a scalar; runs on the JAX backend with
    x64 enabled. Returns the number of coordinates probed.
    """
    rng = np.random.default_rng(seed)
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        params = to_float64(params)
        f_jit = jax.jit(f)
        analytic = to_numpy(jax.grad(f)(params))
        leaves = tree_leaves(params)
        grad_leaves = tree_leaves(analytic)
        probed = 0
        for i in float_leaf_indices(params):
            for flat in rng.choice(leaves[i].size, min(n_probes, leaves[i].size), replace=False):
                def shifted(delta):
                    new = [np.array(a, copy=True) for a in leaves]
                    new[i].reshape(-1)[flat] += delta
                    return float(f_jit(_unflatten(params, new)))
                numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
                got = grad_leaves[i].reshape(-1)[flat]
                np.testing.assert_allclose(got, numeric, rtol=rtol, atol=atol,
                                           err_msg=f'leaf {i}, coordinate {flat}')
                probed += 1
        return probed


def _unflatten(like: Any, leaves: list) -> Any:
    return fastmath.tree_unflatten_like(like, leaves)


def require_shakespeare() -> None:
    """Skips the test, saying how to prepare it, when the default corpus is not there."""
    from trax_sparse import data
    if not data.is_shakespeare_prepared():
        pytest.skip('the Shakespeare corpus is not prepared: '
                    'run python -m trax_sparse.data.prepare')
