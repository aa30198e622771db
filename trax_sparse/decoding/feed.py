"""What decoding feeds a predict-mode model: encoder inputs, the start token and the prompt.

Shared by sampling, beam search and timing; token ids are checked on the host against the
model's vocabulary before any jitted call.

Example:
    >>> import numpy as np
    >>> tokens = np.zeros((2, 1), np.int32)
    >>> with_inputs(None, tokens).shape, [x.shape for x in with_inputs(np.ones((2, 5)), tokens)]
    ((2, 1), [(2, 5), (2, 1)])
"""
from typing import Any

import numpy as onp

from trax_sparse.decoding.predict_state import check_token_ids
from trax_sparse.layers.base import Layer


def with_inputs(inputs: Any, tokens: Any) -> Any:
    """One call's input: the tokens, after the encoder inputs of an encoder-decoder model."""
    return tokens if inputs is None else (inputs, tokens)


def checked_inputs(model: Layer, inputs: Any, batch_size: int) -> tuple[Any, int]:
    """(encoder inputs as a host array, their batch size) with their ids checked; a language
    model (inputs None) keeps `batch_size`."""
    if inputs is None:
        return None, batch_size
    inputs = onp.asarray(inputs)
    check_token_ids(model, 'inputs', inputs, encoder=True)
    return inputs, inputs.shape[0]


def first_tokens(model: Layer, batch_size: int, start_id: int, prompt: Any) -> onp.ndarray:
    """[B, 1 + P]: the start id, then the prompt; checked against the model's vocabulary."""
    first = onp.full((batch_size, 1), start_id, onp.int32)
    if prompt is not None:
        prompt = onp.asarray(prompt)
        if prompt.ndim != 2 or prompt.shape[0] != batch_size:
            raise ValueError(f'prompt must be token ids [batch={batch_size}, length], '
                             f'got shape {prompt.shape}')
        check_token_ids(model, 'prompt', prompt)
        first = onp.concatenate([first, prompt.astype(onp.int32)], axis=1)
    check_token_ids(model, 'start_id', first[:, :1])
    return first


__all__ = ['checked_inputs', 'first_tokens', 'with_inputs']
