"""Host-side checks of a training batch's token ids before the jitted step (JAX would not
raise: an id past the table gathers NaN, id -1 reads the last row).

Model inputs follow the one token rule of `layers.token_ids` (input i against the
vocabulary of the embedding that reads it, the rule decoding uses too); integer targets
(the first batch item after the model inputs) must lie in [0, output width) or equal the
loss layer's padding id (as CrossEntropyLoss requires).

Example:
    >>> import numpy as np
    >>> ids = np.array([[1, 2, 9]])
    >>> ranges = TokenRanges({'vocab_sizes': [5], 'output_shape': (1, 3, 5)}, (ids, ids), 1)
    >>> ranges.check((ids, ids, np.ones((1, 3))), 1, 'TrainTask train, batch 1')
    Traceback (most recent call last):
    ...
    ValueError: TrainTask train, batch 1: inputs item 0 holds token id 9, outside the model's vocabulary [0, 5)
"""
from typing import Sequence

import numpy as np

from trax_sparse.layers.token_ids import check_token_ids, first_bad_id, per_input


def _is_ids(x: object) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer)


class TokenRanges:
    """The id ranges of one model: from `initialize`'s info (its embeddings' `vocab_sizes`
    and its first output's shape) and the first train batch."""

    def __init__(self, info: dict, first_batch: Sequence, n_in: int,
                 pad_id: int | None = None):
        self.pad_id = pad_id
        self.vocab_sizes = tuple(info.get('vocab_sizes') or ())
        out_shape = info.get('output_shape')
        targets = first_batch[n_in] if len(first_batch) > n_in else None
        self.n_classes = out_shape[-1] if out_shape and targets is not None and \
            len(out_shape) == len(np.shape(targets)) + 1 else None

    def check(self, batch: Sequence, n_in: int, where: str) -> None:
        """ValueError naming `where` when a token id is outside the model's range."""
        for i, (x, vocab) in enumerate(zip(batch[:n_in], per_input(self.vocab_sizes, n_in))):
            if vocab is not None and _is_ids(x):
                check_token_ids(x, vocab, f'{where}: inputs item {i}')
        if self.n_classes is None or len(batch) <= n_in or not _is_ids(batch[n_in]):
            return
        bad = first_bad_id(batch[n_in], self.n_classes, allowed=self.pad_id)
        if bad is not None:
            pad = f' (and is not the padding id {self.pad_id})' if self.pad_id is not None else ''
            raise ValueError(f'{where}: targets hold token id {bad}, outside the model output '
                             f"width [0, {self.n_classes}){pad}; check the tokenizer's "
                             f"vocab_size against the model's and the padding id")


__all__ = ['TokenRanges']
