"""Beam search over predict-mode models, with a GNMT length penalty and EOS.

Each of the B·K decoding rows is one beam; after every step the model state
is re-gathered so each row continues its chosen parent beam.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> from trax_sparse.decoding import beam_search
    >>> with fastmath.use_backend('numpy'):
    ...     model = tl.Serial(tl.Embedding(5, 4), tl.Dense(5))
    ...     _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    ...     seqs, scores = beam_search(model, beam_size=3, max_length=4)
    >>> seqs.shape, scores.shape
    ((1, 3, 4), (1, 3))
"""
from typing import Any

import numpy as onp

from trax_sparse import fastmath, shapes
from trax_sparse.decoding.predict_state import (batch_leaf_mask, check_predict_model,
                                                check_token_ids, init_predict_state,
                                                later_inputs, predict_step, reorder_state,
                                                start_decoding)
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer


def length_normalizer(length: int | onp.ndarray, alpha: float) -> Any:
    """GNMT length penalty ((5 + length) / 6) ** alpha (1 when alpha = 0)."""
    return ((5.0 + onp.asarray(length, onp.float64)) / 6.0) ** alpha


def _log_softmax(x: onp.ndarray) -> onp.ndarray:
    x = x.astype(onp.float64)
    m = x.max(-1, keepdims=True)
    return x - m - onp.log(onp.exp(x - m).sum(-1, keepdims=True))


def beam_search(model: Layer, inputs: Any = None, batch_size: int = 1, beam_size: int = 4,
                max_length: int = 50, length_penalty: float = 0.0, eos_id: int | None = None,
                start_id: int = 0, prompt: Any = None, weights: Any = None,
                accelerate: bool = True) -> tuple[onp.ndarray, onp.ndarray]:
    """Returns (sequences [B, K, max_length], scores [B, K]), best first.

    A score is the sum of token log-probabilities divided by the length
    penalty; tokens after EOS are 0. Without eos_id every sequence has
    max_length tokens.
    """
    check_predict_model(model)
    weights = fastmath.to_backend(model.weights if weights is None else weights)
    if inputs is not None:
        inputs = onp.asarray(inputs)
        check_token_ids(model, 'inputs', inputs, encoder=True)
        batch_size = inputs.shape[0]
    k, n_rows = int(beam_size), batch_size * int(beam_size)
    if k < 1:
        raise ValueError(f'beam_size must be >= 1, got {beam_size}')
    if int(max_length) < 1:
        raise ValueError(f'max_length must be >= 1, got {max_length}')
    enc = None if inputs is None else onp.repeat(inputs, k, axis=0)   # [B·K, L_in]

    def signature_for(rows: int):
        tok = shapes.ShapeDtype((rows, 1), onp.int32)
        return tok if enc is None else (shapes.ShapeDtype((rows,) + enc.shape[1:], enc.dtype), tok)

    state = init_predict_state(model, signature_for(n_rows))
    batch_mask = batch_leaf_mask(model, signature_for, n_rows)
    step = predict_step(model, accelerate)
    rng = fastmath.random.get_prng(0)

    tokens = onp.full((n_rows, 1), start_id, onp.int32)
    check_token_ids(model, 'start_id', tokens[:1])
    if prompt is not None:
        check_token_ids(model, 'prompt', prompt)
        tokens = onp.concatenate([tokens, onp.repeat(onp.asarray(prompt, onp.int32), k, 0)], 1)
    alive_scores = onp.full((batch_size, k), -onp.inf)
    alive_scores[:, 0] = 0.0                              # all beams start identical: keep one
    alive_seqs = onp.zeros((batch_size, k, 0), onp.int32)
    fin_seqs = onp.zeros((batch_size, k, max_length), onp.int32)
    fin_scores = onp.full((batch_size, k), -onp.inf)
    rows = onp.arange(batch_size)[:, None]

    for t in range(max_length):
        if t == 0:
            logits, state, _ = start_decoding(model, step, (tokens if enc is None else
                                                            (enc, tokens)),
                                              weights, state, rng, max_length - 1)
            enc = later_inputs(enc)
        else:
            logits, state = step(tokens if enc is None else (enc, tokens), weights, state, rng)
        logp = _log_softmax(onp.asarray(logits)).reshape(batch_size, k, -1)   # [B, K, V]
        vocab = logp.shape[-1]
        cand = (alive_scores[..., None] + logp).reshape(batch_size, k * vocab)
        n_cand = min(2 * k, k * vocab)
        top = onp.argsort(-cand, axis=1, kind='stable')[:, :n_cand]           # [B, 2K]
        top_scores = onp.take_along_axis(cand, top, 1)
        parent, token = top // vocab, (top % vocab).astype(onp.int32)
        seqs = onp.concatenate([alive_seqs[rows, parent], token[..., None]], axis=2)
        is_eos = (token == eos_id) if eos_id is not None else onp.zeros_like(token, bool)
        last = t == max_length - 1
        # Finished candidates: those that emit EOS, and every candidate at the last step.
        done = is_eos | last
        normalized = onp.where(done, top_scores / length_normalizer(t + 1, length_penalty),
                               -onp.inf)
        padded = onp.zeros((batch_size, n_cand, max_length), onp.int32)
        padded[:, :, :t + 1] = seqs
        all_scores = onp.concatenate([fin_scores, normalized], 1)
        best = onp.argsort(-all_scores, axis=1, kind='stable')[:, :k]
        fin_scores = onp.take_along_axis(all_scores, best, 1)
        fin_seqs = onp.concatenate([fin_seqs, padded], 1)[rows, best]
        if last:
            break
        # Alive beams: the best k candidates that did not emit EOS.
        alive_rank = onp.argsort(onp.where(is_eos, 1, 0), axis=1, kind='stable')[:, :k]
        alive_scores = onp.take_along_axis(onp.where(is_eos, -onp.inf, top_scores), alive_rank, 1)
        chosen_parent = onp.take_along_axis(parent, alive_rank, 1)               # [B, K]
        alive_seqs = seqs[rows, alive_rank]
        if eos_id is not None and onp.all(fin_scores[:, -1] >= alive_scores.max(1) /
                                          length_normalizer(max_length, length_penalty)):
            if length_penalty >= 0:   # no alive beam can still beat the k-th finished one
                break
        flat_parent = (onp.arange(batch_size)[:, None] * k + chosen_parent).reshape(-1)
        state = reorder_state(state, batch_mask, xnp.asarray(flat_parent.astype(onp.int32)))
        tokens = alive_seqs[:, :, -1].reshape(n_rows, 1)
    return fin_seqs, fin_scores
