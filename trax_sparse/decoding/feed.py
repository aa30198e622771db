"""What decoding feeds a predict-mode model: encoder inputs, the start token and the prompt.

Shared by sampling, beam search and timing; token ids are checked on the host before any
jitted call, by the one rule of `layers.token_ids`: encoder inputs (model input 0) against
the vocabulary of the embedding that reads them, the start id and the prompt (the last
model input) against the decoder's.

Example:
    >>> import numpy as np
    >>> tokens = np.zeros((2, 1), np.int32)
    >>> with_inputs(None, tokens).shape, [x.shape for x in with_inputs(np.ones((2, 5)), tokens)]
    ((2, 1), [(2, 5), (2, 1)])
"""
from typing import Any

import numpy as onp

from trax_sparse.layers.base import Layer
from trax_sparse.layers.token_ids import check_model_input


def with_inputs(inputs: Any, tokens: Any) -> Any:
    """One call's input: the tokens, after the encoder inputs of an encoder-decoder model."""
    return tokens if inputs is None else (inputs, tokens)


def checked_inputs(model: Layer, inputs: Any, batch_size: int) -> tuple[Any, int]:
    """(encoder inputs as a host array, their batch size) with their ids checked; a language
    model (inputs None) keeps `batch_size`."""
    if inputs is None:
        return None, batch_size
    inputs = onp.asarray(inputs)
    check_model_input(model, 0, inputs, 'decoding: inputs')
    return inputs, inputs.shape[0]


def first_tokens(model: Layer, batch_size: int, start_id: int, prompt: Any) -> onp.ndarray:
    """[B, 1 + P]: the start id, then the prompt; checked against the model's vocabulary."""
    first = onp.full((batch_size, 1), start_id, onp.int32)
    if prompt is not None:
        prompt = onp.asarray(prompt)
        if prompt.ndim != 2 or prompt.shape[0] != batch_size:
            raise ValueError(f'prompt must be token ids [batch={batch_size}, length], '
                             f'got shape {prompt.shape}')
        check_model_input(model, -1, prompt, 'decoding: prompt')
        first = onp.concatenate([first, prompt.astype(onp.int32)], axis=1)
    check_model_input(model, -1, first[:, :1], 'decoding: start_id')
    return first


__all__ = ['checked_inputs', 'first_tokens', 'with_inputs']
