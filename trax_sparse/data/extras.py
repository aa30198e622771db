"""Which optional extras are missing, and the pip command that installs them where you are.

An installed wheel gets `pip install 'trax_sparse[data]'`; a checkout (this package next to
its setup.cfg) gets the editable form, `pip install -e '.[data]'` from the checkout's root
or with its path from elsewhere. Importing it imports none of the extras.

Example:
    >>> install_command(['jax', 'data'], checkout=None)
    "pip install 'trax_sparse[jax,data]'"
    >>> install_command(['data'], checkout='/src/trax_sparse', cwd='/src/trax_sparse')
    "pip install -e '.[data]'"
"""
import importlib.util
import os
from typing import Sequence

# extra -> the modules it brings (checked with find_spec, nothing is imported).
EXTRAS = {
    'jax': ('jax', 'optax'),
    'data': ('tensorflow_datasets', 'importlib_resources', 'sentencepiece'),
    'train': ('tensorboardX', 'tqdm', 'matplotlib'),
}
_ORDER = tuple(EXTRAS)


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that are not installed."""
    return [m for m in EXTRAS[extra] if not installed(m)]


def checkout_root() -> str | None:
    """The source checkout this package runs from (its parent holds setup.cfg), else None."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isfile(os.path.join(root, 'setup.cfg')) else None


def install_command(extras: Sequence[str], checkout: str | None = '',
                    cwd: str | None = None) -> str:
    """The pip command installing `extras`: the wheel form, or in a checkout the editable one.

    checkout: '' finds it (checkout_root()); None means an installed wheel.
    """
    names = ','.join(sorted(set(extras), key=lambda e: _ORDER.index(e) if e in _ORDER else 99))
    checkout = checkout_root() if checkout == '' else checkout
    if checkout is None:
        return f"pip install 'trax_sparse[{names}]'"
    cwd = os.path.abspath(cwd or os.getcwd())
    target = '.' if os.path.abspath(checkout) == cwd else checkout
    return f"pip install -e '{target}[{names}]'"


def missing_hint(extra: str, what: str) -> str:
    """'<what> needs <modules> (not installed): <pip command>' ('' when nothing is missing)."""
    missing = missing_modules(extra)
    if not missing:
        return ''
    return f"{what} needs {', '.join(missing)} (not installed): {install_command([extra])}"


__all__ = ['EXTRAS', 'checkout_root', 'install_command', 'installed', 'missing_hint',
           'missing_modules']
