"""Minimal pytree helpers that work without JAX.

Weights and state are nested tuples/lists/dicts of arrays (None is an empty
node, as in JAX), so these helpers are all the NumPy backend needs.

Example:
    >>> tree_map(lambda a: a * 2, (1, {'b': 2}, [3]))
    (2, {'b': 4}, [6])
"""
from typing import Any, Callable

Tree = Any


def _is_node(x: Any) -> bool:
    return isinstance(x, (tuple, list, dict)) or x is None


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Applies `fn` to every leaf of `tree` (and the matching leaves of `rest`)."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: tree_map(fn, tree[k], *[r[k] for r in rest]) for k in tree}
    if isinstance(tree, (tuple, list)):
        for r in rest:
            if not isinstance(r, (tuple, list)) or len(r) != len(tree):
                raise ValueError(f'tree structures differ: {_describe(tree)} vs {_describe(r)}')
        mapped = [tree_map(fn, *children) for children in zip(tree, *rest)]
        return type(tree)(mapped) if isinstance(tree, list) else tuple(mapped)
    return fn(tree, *rest)


def tree_leaves(tree: Tree) -> list:
    """Returns the leaves of `tree` in a fixed, depth-first order."""
    leaves = []
    tree_map(leaves.append, tree)
    return leaves


def tree_structure(tree: Tree) -> Tree:
    """The tree with every leaf replaced by None: comparable with `==`."""
    if tree is None:
        return '()'
    if isinstance(tree, dict):
        return {k: tree_structure(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(tree_structure(c) for c in tree)
    return '*'


def tree_unflatten_like(tree: Tree, leaves: list) -> Tree:
    """Puts `leaves` (in `tree_leaves` order) back into the shape of `tree`."""
    it = iter(leaves)
    out = tree_map(lambda _: next(it), tree)
    remaining = list(it)
    if remaining:
        raise ValueError(f'{len(remaining)} leaves left over when unflattening')
    return out


def _describe(x: Tree) -> str:
    if isinstance(x, (tuple, list)):
        return f'{type(x).__name__} of {len(x)}'
    return type(x).__name__
