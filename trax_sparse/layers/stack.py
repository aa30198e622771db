"""The data stack that layers share: a list of items, the first on top.

A layer with n inputs (or outputs) takes (or gives) one item alone when n == 1,
else a tuple of n items; these two helpers convert between that and the stack.

Example:
    >>> stack = to_stack(('a', 'b'), 2) + ['rest']
    >>> stack, from_stack(stack, 1), from_stack(stack, 2)
    (['a', 'b', 'rest'], 'a', ('a', 'b'))
"""
from typing import Any, Sequence


def to_stack(items: Any, n: int) -> list:
    """A layer's n inputs or outputs (one item alone, else a tuple) as a list of stack items."""
    if n == 1:
        return [items]
    return list(items) if n > 0 else []


def from_stack(stack: Sequence[Any], n: int) -> Any:
    """The top n items of a data stack as a layer's input: one item alone, else a tuple."""
    return stack[0] if n == 1 else tuple(stack[:n])


__all__ = ['from_stack', 'to_stack']
