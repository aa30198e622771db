"""Host-side checks of token ids before a jitted step (JAX would not raise: an id past the
table gathers NaN, id -1 reads the last row).

Integer model inputs must lie in [0, V) where V is the largest Embedding table of the
model; integer targets (the first batch item after the model inputs) must lie in
[0, output width) or equal the loss layer's padding id (as CrossEntropyLoss requires).

Example:
    >>> import numpy as np
    >>> ids = np.array([[1, 2, 9]])
    >>> check_token_ids((ids, ids, np.ones((1, 3))), n_in=1, vocab_size=5, n_classes=None,
    ...                 where='TrainTask train, batch 1')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: TrainTask train, batch 1: inputs item 0 holds token id 9, outside the model's...
"""
from typing import Sequence

import numpy as np


def _bad_id(x: np.ndarray, limit: int) -> int | None:
    if x.size == 0:
        return None
    low, high = int(x.min()), int(x.max())
    if low < 0:
        return low
    return high if high >= limit else None


def check_token_ids(batch: Sequence, n_in: int, vocab_size: int | None,
                    n_classes: int | None, where: str, pad_id: int | None = None) -> None:
    """Raises ValueError naming `where` when a token id is outside the model's range."""
    if vocab_size is not None:
        for i, x in enumerate(batch[:n_in]):
            if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer):
                bad = _bad_id(x, vocab_size)
                if bad is not None:
                    raise ValueError(
                        f"{where}: inputs item {i} holds token id {bad}, outside the model's "
                        f'vocabulary [0, {vocab_size}) (its Embedding table has {vocab_size} '
                        f"rows); check the tokenizer's vocab_size against the model's")
    if n_classes is None or len(batch) <= n_in:
        return
    targets = batch[n_in]
    if not (isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.integer)):
        return
    if pad_id is not None:
        targets = targets[targets != pad_id]
    bad = _bad_id(targets, n_classes)
    if bad is not None:
        pad = f' (and is not the padding id {pad_id})' if pad_id is not None else ''
        raise ValueError(f'{where}: targets hold token id {bad}, outside the model output '
                         f"width [0, {n_classes}){pad}; check the tokenizer's vocab_size "
                         f"against the model's and the padding id")


class TokenRanges:
    """The id ranges of one model: from `initialize`'s info and the first train batch."""

    def __init__(self, info: dict, first_batch: Sequence, n_in: int,
                 pad_id: int | None = None):
        self.pad_id = pad_id
        sizes = info.get('vocab_sizes') or []
        self.vocab_size = max(sizes) if sizes else None
        out_shape = info.get('output_shape')
        targets = first_batch[n_in] if len(first_batch) > n_in else None
        self.n_classes = out_shape[-1] if out_shape and targets is not None and \
            len(out_shape) == len(np.shape(targets)) + 1 else None

    def check(self, batch: Sequence, n_in: int, where: str) -> None:
        check_token_ids(batch, n_in, self.vocab_size, self.n_classes, where, self.pad_id)


__all__ = ['TokenRanges', 'check_token_ids']
