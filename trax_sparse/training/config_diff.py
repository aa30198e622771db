"""The bindings that differ between two operative gin configs (a resume with a changed config).

`bindings(text)` reads `name = value` statements (a value may run over several lines);
`diff_lines(old, new)` lists the changes as 'name: old -> new'. `train.steps` is left out:
asking for more steps is how a run is extended, not a change of what it trains.

Example:
    >>> old = 'train.steps = 10\\nconstant.value = 0.05\\n'
    >>> new = 'train.steps = 10\\nconstant.value = 0.01\\n'
    >>> diff_lines(old, new)
    ['constant.value: 0.05 -> 0.01']
"""
import re

_STATEMENT = re.compile(r'^([A-Za-z_@%][\w./%@]*)\s*=\s*(.*)$')
NOT_A_CHANGE = frozenset({'train.steps'})      # extending a run


def bindings(text: str) -> dict[str, str]:
    """{binding: value text} of a gin config; comments, imports and includes are skipped."""
    result: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        stripped = line.split('#', 1)[0].rstrip() if '#' in line else line.rstrip()
        if not stripped.strip():
            name = None if not line.startswith(' ') else name
            continue
        match = _STATEMENT.match(stripped)
        if match and not line[0].isspace():
            name = match.group(1)
            result[name] = match.group(2).strip()
        elif name is not None and line[0].isspace():
            result[name] = f'{result[name]} {stripped.strip()}'.strip()
    return result


def diff_lines(old_text: str, new_text: str) -> list[str]:
    """'name: old -> new' for each changed binding ('(unset)' for a missing side), sorted."""
    old, new = bindings(old_text), bindings(new_text)
    return [f"{name}: {old.get(name, '(unset)')} -> {new.get(name, '(unset)')}"
            for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name) and name not in NOT_A_CHANGE]


__all__ = ['bindings', 'diff_lines']
