"""Checks of a model's arguments: a part or the flags that build it, never both; a bad kind
string names the model parameter it came from.

Example:
    >>> check_part_or_flags('Terraformer', 'ff', None, d_ff=(4096, 2048))    # no part: fine
    >>> check_part_or_flags('Terraformer', 'ff', lambda mode: None, d_ff=(4096, 2048))
    Traceback (most recent call last):
    ...
    ValueError: Terraformer: ff= was given, so d_ff=4096 would be ignored; give one
"""
from typing import Any, Sequence


def check_part_or_flags(model: str, part_name: str, part: Any,
                        **flags: tuple[Any, Any]) -> None:
    """ValueError when `part` is given and a flag that would build it is not at its default.

    flags: name=(value, default). Give only the flags that build this part alone (a flag
    shared with other parts, such as d_model, is not an error).
    """
    if part is None:
        return
    changed = [f'{name}={value!r}' for name, (value, default) in flags.items()
               if value is not default and value != default]
    if changed:
        raise ValueError(f'{model}: {part_name}= was given, so {" / ".join(changed)} would be '
                         f'ignored; give one')


def check_kind(model: str, parameter: str, value: Any, kinds: Sequence[str]) -> str:
    """`value` if it is one of `kinds`, else a ValueError naming `model`'s `parameter`."""
    if value not in kinds:
        raise ValueError(f'{model}: {parameter}={value!r} must be one of {tuple(kinds)}')
    return value


__all__ = ['check_kind', 'check_part_or_flags']
