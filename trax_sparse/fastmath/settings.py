"""Performance settings in one place: `Tuning`, read with `tuning()`, changed with `tuned`.

Every size threshold that decides *how* (never *what*) the backends compute lives in one
frozen `Tuning`: when the NumPy backend shares work among its threads, how many BLAS
threads its own calls use, which formulation a convolution takes. Layers read these
fields and hold no literal thresholds. Results do not depend on any field (tests set them
to extremes to reach every path); only the speed does. The defaults were measured on a
2-core x86_64 machine (docs/performance.md says how); another machine may want others.

Like `fastmath.use_backend`, `tuned(**fields)` holds for a block in the current context
(a thread, an asyncio task, and the NumPy backend's worker threads, which run in a copy
of their caller's context); `set_tuning` changes the process default. No environment
variable is read.

Example:
    >>> from trax_sparse import fastmath
    >>> fastmath.tuning().conv_patches_max_tokens
    16
    >>> with fastmath.tuned(conv_patches_max_tokens=0):
    ...     fastmath.tuning().conv_patches_max_tokens
    0
"""
import contextlib
import contextvars
import dataclasses
import os
from typing import Any, Iterator


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The backends' performance thresholds (sizes in bytes, multiply-adds or tokens).

    NumPy backend, threads (`fastmath.in_parts`, `parallel_matmul`, `parallel_matmuls`):
        threads: worker threads sharing large work (one part each; 1 = never split).
        parallel_gather_min_bytes: `in_parts` work reading at least this many bytes is split
            (SparseFF's gathered rows by blocks, a long K/V cache by heads).
        parallel_matmul_min_macs: a product of at least this many multiply-adds is split
            along the contraction (compute bound: sparse QKV's MultiplicativeDense at 17B).
        parallel_matvec_min_bytes: ... or one whose matrix has at least this many bytes
            (memory bound: the output layer, the 17B matrices).
        parallel_matmuls_min_macs: a list of products totalling this many multiply-adds is
            shared among the threads, whole products each (sparse QKV's convolutions).
    NumPy backend, BLAS:
        blas_threads: BLAS threads of the library's own NumPy calls (threadpoolctl; the
            process setting is restored after each call); None leaves BLAS alone.
    JAX backend:
        jax_gather_parts: large row gathers (`take_rows_dot`, ...) go as this many gathers,
            which XLA runs concurrently (from parallel_gather_min_bytes on).
    JAX backend, predict-mode attention under jit (`attention_core.cached_attention_step`):
        attention_block_slots: the K/V cache is read in blocks of this many slots, only the
            filled ones; a cache of at most one block is read whole.
        attention_whole_buffer_percent: from this fill (percent of the slots) one pass over
            the whole buffer is cheaper than the loop over the filled blocks.
    Both backends, `LocallyConvDense` (sparse QKV's convolutions):
        conv_patches_max_tokens: calls of at most this many tokens (decoding steps) gather
            patches and do one matmul per kernel.
        conv_stacked_taps_min_width: longer calls with modules at least this wide stack the
            shifted inputs and do one matmul for all kernels; narrower ones use `conv`.
    """
    threads: int = dataclasses.field(default_factory=_default_threads)
    parallel_gather_min_bytes: int = 8 << 20
    parallel_matmul_min_macs: int = 32_000_000
    parallel_matvec_min_bytes: int = 32 << 20
    parallel_matmuls_min_macs: int = 16_000_000
    blas_threads: int | None = 1
    jax_gather_parts: int = 4
    attention_block_slots: int = 128
    attention_whole_buffer_percent: int = 40
    conv_patches_max_tokens: int = 16
    conv_stacked_taps_min_width: int = 32

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == 'blas_threads' and value is None:
                continue
            least = 1 if field.name in ('threads', 'blas_threads', 'jax_gather_parts',
                                        'attention_block_slots') else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f'fastmath.Tuning.{field.name} must be an int >= {least}'
                                 f'{" or None" if field.name == "blas_threads" else ""}, '
                                 f'got {value!r}')

    def replace(self, **fields: Any) -> 'Tuning':
        """A copy with `fields` changed; an unknown name is a ValueError naming the fields."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f'unknown fastmath.Tuning field(s) {unknown}; the fields are '
                             f'{[f.name for f in dataclasses.fields(self)]}')
        return dataclasses.replace(self, **fields)


_override: contextvars.ContextVar = contextvars.ContextVar('trax_sparse_tuning', default=None)
_global = Tuning()


def tuning() -> Tuning:
    """The live settings: the innermost `tuned` block's, else the process's (`set_tuning`)."""
    return _override.get() or _global


def set_tuning(settings: Tuning | None = None, **fields: Any) -> Tuning:
    """Sets the process's settings (a `tuned` block still wins) and returns the old ones.

    `settings` replaces them whole (None: the current ones), then `fields` change single
    fields, e.g. `set_tuning(threads=1)`; `set_tuning(Tuning())` restores the defaults.
    """
    global _global
    old = _global
    _global = (settings if settings is not None else _global).replace(**fields)
    return old


@contextlib.contextmanager
def tuned(**fields: Any) -> Iterator[Tuning]:
    """Runs the block with some fields of `tuning()` changed (this context only).

    Example:
        >>> with tuned(threads=1) as settings:
        ...     settings.threads, tuning().threads
        (1, 1)
    """
    settings = tuning().replace(**fields)
    token = _override.set(settings)
    try:
        yield settings
    finally:
        _override.reset(token)


__all__ = ['Tuning', 'set_tuning', 'tuned', 'tuning']
