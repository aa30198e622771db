"""Backend dispatch: layer code runs on NumPy or on JAX, chosen at call time.

`fastmath.numpy` is the live backend's array module (numpy or jax.numpy) and
`fastmath.random` its keyed RNG; the helpers below (`scan`, `conv`, ...) call
the live backend's version. JAX is imported only when the JAX backend is used.
Every performance threshold of the backends (threads, BLAS threads, which formulation a
layer computes with) is one setting, `fastmath.tuning()`, changed with
`fastmath.tuned(...)` or `fastmath.set_tuning(...)` (settings.py, docs/performance.md).

Example:
    >>> from trax_sparse import fastmath
    >>> from trax_sparse.fastmath import numpy as xnp
    >>> with fastmath.use_backend('numpy'):
    ...     print(fastmath.backend_name(), type(xnp.ones(2)).__module__)
    numpy numpy
"""
import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any, Callable, Iterator

from trax_sparse.fastmath import numpy_backend
from trax_sparse.fastmath.blas_threads import blas_scope
from trax_sparse.fastmath.numpy_backend import BackendError
from trax_sparse.fastmath.tree import tree_leaves, tree_map, tree_structure, tree_unflatten_like
from trax_sparse.fastmath.settings import Tuning, set_tuning, tuned, tuning

BACKENDS = ('numpy', 'jax')
_override: contextvars.ContextVar = contextvars.ContextVar('trax_sparse_backend', default=None)
_global_name: str | None = None


def jax_available() -> bool:
    """True when jax can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec('jax') is not None
    except (ImportError, ValueError):
        return False


def _check_name(name: str) -> str:
    name = str(name).lower()
    if name not in BACKENDS:
        raise ValueError(f'unknown fastmath backend {name!r}; expected one of {BACKENDS}')
    if name == 'jax' and not jax_available():
        raise BackendError("fastmath backend 'jax' asked for, but jax is not installed "
                           "(pip install jax), or use the 'numpy' backend")
    return name


def _default_name() -> str:
    env = os.environ.get('TRAX_SPARSE_BACKEND')
    if env:
        return _check_name(env)
    return 'jax' if jax_available() else 'numpy'


def backend_name() -> str:
    """The live backend: 'numpy' or 'jax'."""
    global _global_name
    name = _override.get()
    if name is not None:
        return name
    if _global_name is None:
        _global_name = _default_name()
    return _global_name


def set_backend(name: str) -> None:
    """Sets the backend for the whole process (a `use_backend` block still wins)."""
    global _global_name
    _global_name = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Runs the block on backend `name` ('numpy' or 'jax')."""
    token = _override.set(_check_name(name))
    try:
        yield
    finally:
        _override.reset(token)


_modules: dict[str, ModuleType] = {'numpy': numpy_backend}


def backend() -> ModuleType:
    """The live backend module (numpy_backend or jax_backend)."""
    # Hot: every `fastmath.numpy.<op>` in layer code comes through here.
    name = _override.get() or _global_name or backend_name()
    module = _modules.get(name)
    if module is None:
        module = _modules[name] = importlib.import_module(f'trax_sparse.fastmath.{name}_backend')
    return module


def is_jax() -> bool:
    return backend_name() == 'jax'


class _ArrayModuleProxy:
    """`numpy` / `jax.numpy`, whichever backend is live when an attribute is read."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(backend().array_module, attr)

    def __repr__(self) -> str:
        return f'<fastmath.numpy proxy for {backend_name()}>'


class _RandomProxy:
    """Keyed RNG of the live backend: get_prng, split, fold_in, uniform, normal, ..."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(backend().random, attr)


numpy = _ArrayModuleProxy()
random = _RandomProxy()


def _dispatched(name: str) -> Callable:
    reference = getattr(numpy_backend, name)

    @functools.wraps(reference)
    def call(*args, **kwargs):
        return getattr(backend(), name)(*args, **kwargs)
    return call


stop_gradient = _dispatched('stop_gradient')
optimization_barrier = _dispatched('optimization_barrier')
dynamic_slice = _dispatched('dynamic_slice')
dynamic_update_slice = _dispatched('dynamic_update_slice')
update_cache = _dispatched('update_cache')
scan = _dispatched('scan')
fori_loop = _dispatched('fori_loop')
cond = _dispatched('cond')
sort_key_val = _dispatched('sort_key_val')
logsumexp = _dispatched('logsumexp')
softmax_with_lse = _dispatched('softmax_with_lse')
conv = _dispatched('conv')
top_k = _dispatched('top_k')
erf = _dispatched('erf')
jit = _dispatched('jit')
remat = _dispatched('remat')
grad = _dispatched('grad')
value_and_grad = _dispatched('value_and_grad')
vjp = _dispatched('vjp')
custom_vjp = _dispatched('custom_vjp')
abstract_eval = _dispatched('abstract_eval')
is_concrete = _dispatched('is_concrete')
device_count = _dispatched('device_count')
take_permutation = _dispatched('take_permutation')
take_rows_dot = _dispatched('take_rows_dot')
take_rows_weighted_sum = _dispatched('take_rows_weighted_sum')
parallel_matmul = _dispatched('parallel_matmul')
parallel_matmuls = _dispatched('parallel_matmuls')
in_parts = _dispatched('in_parts')
after_cotangent = _dispatched('after_cotangent')


def cached_jit(make: Callable[..., Callable], *key: Any,
               static_argnums: tuple[int, ...] = ()) -> Callable:
    """`jit(make(*key))`, built once per live backend and hashable `key`.

    For layer code that calls a jit-compiled kernel eagerly (eager JAX would
    otherwise dispatch every array op on its own); under an outer jit it is
    simply inlined; on NumPy `jit` is the identity.

    Example:
        >>> def scaler(factor):
        ...     return lambda x: x * factor
        >>> with use_backend('numpy'):
        ...     triple = cached_jit(scaler, 3)
        ...     print(triple(2.0), triple is cached_jit(scaler, 3))
        6.0 True
    """
    return _cached_jit(backend_name(), make, key, tuple(static_argnums))


@functools.lru_cache(maxsize=None)
def _cached_jit(name: str, make: Callable[..., Callable], key: tuple,
                static_argnums: tuple[int, ...]) -> Callable:
    with use_backend(name):
        return jit(make(*key), static_argnums=static_argnums)


def to_backend(tree: Any) -> Any:
    """Converts every leaf to an array of the live backend (host NumPy or jax.Array)."""
    return tree_map(backend().array_module.asarray, tree)


def to_numpy(tree: Any) -> Any:
    """Copies every leaf of a tree into a writable NumPy array that owns its memory.

    A real copy, not a view of the JAX buffer (`np.asarray` of a CPU jax.Array is a
    read-only view of XLA's memory): NumPy places arrays of 4 MB and more on huge
    pages where the OS allows, so the NumPy decoding path's random row reads (sparse FF)
    miss the TLB less: 96 random 4 KB rows of 24 layers read about 20% faster.

    Example:
        >>> import numpy as np
        >>> to_numpy({'w': np.zeros(2, np.float32)})['w'].flags['OWNDATA']
        True
    """
    import numpy as onp
    return tree_map(lambda leaf: onp.array(leaf, copy=True), tree)


__all__ = [
    'BACKENDS', 'BackendError', 'Tuning', 'abstract_eval', 'after_cotangent', 'backend',
    'backend_name', 'blas_scope', 'cached_jit', 'cond', 'conv', 'custom_vjp', 'device_count',
    'dynamic_slice', 'dynamic_update_slice', 'erf', 'fori_loop', 'grad', 'in_parts', 'is_concrete',
    'is_jax', 'jax_available', 'jit', 'logsumexp', 'numpy', 'optimization_barrier',
    'parallel_matmul', 'parallel_matmuls', 'random', 'remat', 'scan', 'set_backend', 'set_tuning',
    'softmax_with_lse', 'sort_key_val', 'stop_gradient', 'take_permutation', 'take_rows_dot',
    'take_rows_weighted_sum',
    'to_backend', 'to_numpy', 'top_k', 'tree_leaves', 'tree_map', 'tree_structure',
    'tree_unflatten_like', 'tuned', 'tuning', 'update_cache', 'use_backend', 'value_and_grad',
    'vjp',
]
