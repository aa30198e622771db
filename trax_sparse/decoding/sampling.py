"""Autoregressive sampling from predict-mode models (greedy, temperature, top-k, EOS, prompts).

Example (a position-wise toy model, so the output is easy to check):
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> from trax_sparse.decoding import autoregressive_sample
    >>> with fastmath.use_backend('numpy'):
    ...     model = tl.Serial(tl.Embedding(5, 4), tl.Dense(5))
    ...     _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    ...     out = autoregressive_sample(model, max_length=4, temperature=0.0)
    >>> out.shape
    (1, 4)
"""
from typing import Any, Iterator

import numpy as onp

from trax_sparse import fastmath, shapes
from trax_sparse.decoding.feed import checked_inputs, first_tokens, with_inputs
from trax_sparse.decoding.mesh import DecodingMesh, as_decoding_mesh, place_for_decoding
from trax_sparse.decoding.predict_state import (check_predict_model, fresh_state, later_inputs,
                                                predict_step, start_decoding)
from trax_sparse.decoding.storage import store_weights
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer


def sample_logits(logits: Any, rng: Any, temperature: float = 1.0,
                  top_k: int | None = None) -> Any:
    """Token ids [B] from logits [B, V]: argmax at temperature 0, else Gumbel-max sampling."""
    if top_k is not None:
        if top_k < 1 or top_k > logits.shape[-1]:
            raise ValueError(f'top_k must be in [1, vocab size {logits.shape[-1]}], got {top_k}')
        kth = fastmath.top_k(logits, top_k)[0][..., -1:]            # [B, 1]
        logits = xnp.where(logits < kth, -1e30, logits)
    if temperature == 0.0:
        return xnp.argmax(logits, axis=-1).astype(xnp.int32)
    if temperature < 0:
        raise ValueError(f'temperature must be >= 0, got {temperature}')
    noise = fastmath.random.gumbel(rng, logits.shape, logits.dtype)
    return xnp.argmax(logits / temperature + noise, axis=-1).astype(xnp.int32)


def autoregressive_sample_stream(model: Layer, inputs: Any = None, batch_size: int = 1,
                                 temperature: float = 1.0, start_id: int = 0,
                                 prompt: Any = None, top_k: int | None = None, rng: Any = None,
                                 weights: Any = None, state: Any = None,
                                 accelerate: bool = True,
                                 max_steps: int | None = None,
                                 mesh: DecodingMesh | dict | None = None,
                                 weights_dtype: str | None = None,
                                 cache_dtype: str | None = None) -> Iterator[Any]:
    """Yields the next token ids [B] until the model's caches are full (the caller stops it).

    model: a predict-mode model (initialized; its weights may come from a
      train-mode checkpoint: the trees agree). Any batch size works: the
      state is made for this call (`init_predict_state`).
    inputs: encoder inputs [B, L_in] for encoder-decoder models (given to the
      first call; later calls get an empty [B, 0] array), or None for an LM.
    prompt: token ids [B, P] that the continuation follows (not yielded).
    weights/state: default to the model's weights and a fresh state; a given
      state is copied, never modified.
    max_steps: if given, checked against the caches before decoding starts.
    mesh: a `DecodingMesh` (or its mesh_shape dict) to split the weights and caches
      over devices (JAX only; `decoding.mesh`); the tokens are the same.
    weights_dtype: store the weights so once before decoding ('bfloat16', 'gathered_bfloat16',
      'auto', ...; `decoding.storage`); None keeps them as given.
    cache_dtype: the attention K/V caches' dtype ('bfloat16', ...); None: the compute dtype.
    Token ids and lengths are checked on the host before any jitted call.
    """
    check_predict_model(model)
    if temperature < 0:
        raise ValueError(f'temperature must be >= 0, got {temperature}')
    weights = store_weights(model, model.weights if weights is None else weights,
                            weights_dtype)
    weights = fastmath.to_backend(weights)
    rng = fastmath.random.get_prng(0) if rng is None else rng
    inputs, batch_size = checked_inputs(model, inputs, batch_size)
    tokens = first_tokens(model, batch_size, start_id, prompt)
    step_signature = shapes.signature(with_inputs(inputs, tokens[:, :1]))
    state = fresh_state(model, state, step_signature, cache_dtype)
    mesh, state_shardings = as_decoding_mesh(mesh), None
    if mesh is not None:
        weights, state, state_shardings = place_for_decoding(mesh, model, weights, state,
                                                             inputs, batch_size)
    step = predict_step(model, accelerate, mesh, state_shardings)
    rng, step_rng, sample_rng = fastmath.random.split(rng, 3)
    n_more = None if max_steps is None else max_steps - 1
    logits, state, room = start_decoding(model, step, with_inputs(inputs, tokens), weights,
                                         state, step_rng, n_more)
    inputs = later_inputs(inputs)
    while True:
        next_ids = sample_logits(logits, sample_rng, temperature, top_k)
        yield next_ids
        if room is not None and room <= 0:
            raise ValueError(f'decoding: the caches of {model.name} are full (its max_len); '
                             f'no further token can be decoded')
        room = None if room is None else room - 1
        rng, step_rng, sample_rng = fastmath.random.split(rng, 3)
        logits, state = step(with_inputs(inputs, next_ids[:, None]), weights, state, step_rng)


def autoregressive_sample(model: Layer, inputs: Any = None, batch_size: int = 1,
                          temperature: float = 1.0, start_id: int = 0, eos_id: int | None = None,
                          max_length: int = 100, prompt: Any = None, top_k: int | None = None,
                          rng: Any = None, weights: Any = None, state: Any = None,
                          accelerate: bool = True,
                          mesh: DecodingMesh | dict | None = None,
                          weights_dtype: str | None = None,
                          cache_dtype: str | None = None) -> onp.ndarray:
    """Samples [B, max_length] token ids (positions after an EOS are set to 0).

    Stops early once every row has produced `eos_id`. A `max_length` beyond
    what the model's caches hold is an error before decoding starts. `mesh`,
    `weights_dtype` and `cache_dtype`: as in `autoregressive_sample_stream`.
    """
    if int(max_length) < 1:
        raise ValueError(f'max_length must be >= 1, got {max_length}')
    stream = autoregressive_sample_stream(
        model, inputs=inputs, batch_size=batch_size, temperature=temperature, start_id=start_id,
        prompt=prompt, top_k=top_k, rng=rng, weights=weights, state=state, accelerate=accelerate,
        max_steps=max_length, mesh=mesh, weights_dtype=weights_dtype, cache_dtype=cache_dtype)
    rows, done = [], None
    for _ in range(max_length):
        ids = onp.asarray(next(stream))
        if done is not None:
            ids = onp.where(done, 0, ids)
        rows.append(ids)
        if eos_id is not None:
            done = (ids == eos_id) if done is None else (done | (ids == eos_id))
            if done.all():
                break
    stream.close()
    return onp.stack(rows, axis=1).astype(onp.int32)
