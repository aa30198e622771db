"""The context of a layer call: reversible replay, and predict-mode cache use.

Both are context variables, read by layers while they run (or are traced):
- `replay_context()` / `is_replaying()`: a recompute of an earlier forward
  (reversible backward) must reuse the forward's discrete random choices.
- `recording_predict_use()` / `note_predict_use(...)`: caching layers report
  how many positions each predict call adds, so decoding can check lengths
  before it starts (docs/predict_mode.md).

Example:
    >>> with recording_predict_use() as uses:
    ...     note_predict_use('Attention', capacity=16, n_new=3)
    >>> uses
    [PredictUse(layer='Attention', capacity=16, n_new=3)]
"""
import contextlib
import contextvars
from typing import Iterator, NamedTuple

_replaying: contextvars.ContextVar = contextvars.ContextVar('trax_sparse_replay', default=False)
_predict_log: contextvars.ContextVar = contextvars.ContextVar('trax_sparse_predict_log',
                                                              default=None)


@contextlib.contextmanager
def replay_context() -> Iterator[None]:
    """Marks a recompute of an earlier forward pass (reversible backward).

    Inside it, a layer that makes discrete random choices (LSH buckets, sparse
    FF units) must read them from the state it is given (the `new_state` its
    forward returned) instead of drawing them again, so the recompute sees
    exactly the forward's attention pattern and units.
    """
    token = _replaying.set(True)
    try:
        yield
    finally:
        _replaying.reset(token)


def is_replaying() -> bool:
    """True inside `replay_context()`."""
    return _replaying.get()


class PredictUse(NamedTuple):
    """One predict-mode call of a caching layer: `n_new` positions into `capacity` slots."""
    layer: str
    capacity: int
    n_new: int


@contextlib.contextmanager
def recording_predict_use() -> Iterator[list]:
    """Collects a `PredictUse` for every caching layer that runs (or is traced) inside.

    Decoding runs the prefix call once inside it to learn, before decoding,
    whether the caches hold the whole sequence (see docs/predict_mode.md).
    """
    log: list = []
    token = _predict_log.set(log)
    try:
        yield log
    finally:
        _predict_log.reset(token)


def note_predict_use(layer_name: str, capacity: int, n_new: int) -> None:
    """Called by caching layers in predict mode (a no-op outside `recording_predict_use`)."""
    log = _predict_log.get()
    if log is not None:
        log.append(PredictUse(layer_name, int(capacity), int(n_new)))


__all__ = ['PredictUse', 'is_replaying', 'note_predict_use', 'recording_predict_use',
           'replay_context']
