"""Token ids against a model's vocabularies: the one check of training, decoding and binaries.

The rule (docs/predict_mode.md, "Token ids"): input i of a model holds ids in [0, V_i),
where V_i is the vocabulary of the embedding that reads it. A model with one embedding per
input (as many `Layer.vocab_sizes()` as `n_in`; they are listed in the order the layer tree
reaches them, which is the order of the inputs) gives V_i = vocab_sizes()[i]: an LM's
tokens, an encoder-decoder's inputs (encoder embedding) and targets (decoder embedding),
each against its own vocabulary. Any other model gives every input the smallest
vocabulary (an id must be valid for every embedding that may read it). The checks run on
the host, before a jitted call: under jit an id past the table would gather NaN.

Example:
    >>> import numpy as np
    >>> from trax_sparse import layers as tl
    >>> model = tl.Serial(tl.Embedding(5, 4), tl.Dense(5))
    >>> input_vocab_sizes(model)
    (5,)
    >>> check_token_ids(np.array([[1, 2, 9]]), 5, 'prompt')
    Traceback (most recent call last):
    ...
    ValueError: prompt holds token id 9, outside the model's vocabulary [0, 5)
"""
from typing import Any, Sequence

import numpy as onp


def first_bad_id(ids: Any, limit: int | None, allowed: int | None = None) -> int | None:
    """The smallest negative id, else the largest id >= limit, else None; `allowed` (a
    padding id) is never bad. `limit` None checks only ids >= 0."""
    ids = onp.asarray(ids)
    if allowed is not None:
        ids = ids[ids != allowed]
    if ids.size == 0:
        return None
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        return low
    return high if limit is not None and high >= limit else None


def check_token_ids(ids: Any, vocab_size: int | None, what: str,
                    allowed: int | None = None) -> None:
    """ValueError naming `what` unless `ids` are integers in [0, vocab_size) (or `allowed`)."""
    ids = onp.asarray(ids)
    if ids.size and not onp.issubdtype(ids.dtype, onp.integer):
        raise ValueError(f'{what} must be integer token ids, got dtype {ids.dtype}')
    bad = first_bad_id(ids, vocab_size, allowed)
    if bad is None:
        return
    limit = f'[0, {vocab_size})' if vocab_size is not None else '(ids >= 0)'
    also = f' (and is not the padding id {allowed})' if allowed is not None else ''
    raise ValueError(f"{what} holds token id {bad}, outside the model's vocabulary "
                     f'{limit}{also}')


def per_input(vocab_sizes: Sequence[int], n_in: int) -> tuple[int | None, ...]:
    """The rule: a model's `vocab_sizes()` -> the vocabulary of each of its `n_in` inputs
    (None: no embedding, nothing to check)."""
    sizes = tuple(int(n) for n in vocab_sizes)
    if len(sizes) == n_in:
        return sizes
    return (min(sizes) if sizes else None,) * n_in


def input_vocab_sizes(model: Any) -> tuple[int | None, ...]:
    """The vocabulary of each of the model's `n_in` inputs (`per_input`)."""
    return per_input(model.vocab_sizes(), model.n_in)


def check_model_input(model: Any, index: int, ids: Any, what: str) -> None:
    """Checks the ids given as input `index` of `model` (negative: from the end) by the rule."""
    check_token_ids(ids, input_vocab_sizes(model)[index], what)


__all__ = ['check_model_input', 'check_token_ids', 'first_bad_id', 'input_vocab_sizes',
           'per_input']
