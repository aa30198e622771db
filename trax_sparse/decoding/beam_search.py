"""Beam search over predict-mode models, with a GNMT length penalty and EOS.

Each of the B·K decoding rows is one beam; after every step the model state
is re-gathered so each row continues its chosen parent beam.

Example (one beam decodes greedily):
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> from trax_sparse.decoding import autoregressive_sample, beam_search
    >>> model = tl.Serial(tl.Embedding(5, 4), tl.Dense(5))
    >>> with fastmath.use_backend('numpy'):
    ...     _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    ...     seqs, scores = beam_search(model, beam_size=3, max_length=4)
    ...     one_beam, _ = beam_search(model, beam_size=1, max_length=4)
    ...     greedy = autoregressive_sample(model, max_length=4, temperature=0.0)
    >>> seqs.shape, scores.shape, bool((one_beam[:, 0] == greedy).all())
    ((1, 3, 4), (1, 3), True)
"""
import dataclasses
from typing import Any

import numpy as onp

from trax_sparse import fastmath, shapes
from trax_sparse.decoding.feed import checked_inputs, first_tokens, with_inputs
from trax_sparse.decoding.mesh import DecodingMesh, as_decoding_mesh, place_for_decoding
from trax_sparse.decoding.predict_state import (batch_leaf_mask, check_predict_model,
                                                init_predict_state, later_inputs, predict_step,
                                                reorder_state, start_decoding)
from trax_sparse.decoding.storage import store_weights
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
                accelerate: bool = True, mesh: DecodingMesh | dict | None = None,
                weights_dtype: str | None = None, cache_dtype: str | None = None
                ) -> tuple[onp.ndarray, onp.ndarray]:
    """Returns (sequences [B, K, max_length], scores [B, K]), best first.

    A score is the sum of token log-probabilities divided by the length
    penalty; tokens after EOS are 0. Without eos_id every sequence has
    max_length tokens. `mesh`: split the weights and caches over devices (JAX only), as
    in `autoregressive_sample_stream`; `weights_dtype` / `cache_dtype`: store the weights /
    the K/V caches in 16 bits (`decoding.storage`), as there.
    """
    check_predict_model(model)
    weights = fastmath.to_backend(store_weights(model, model.weights if weights is None
                                                else weights, weights_dtype))
    inputs, batch_size = checked_inputs(model, inputs, batch_size)
    k = int(beam_size)
    if k < 1:
        raise ValueError(f'beam_size must be >= 1, got {beam_size}')
    if int(max_length) < 1:
        raise ValueError(f'max_length must be >= 1, got {max_length}')
    enc = None if inputs is None else onp.repeat(inputs, k, axis=0)   # [B·K, L_in]
    state, batch_mask = _beam_state(model, enc, batch_size * k, cache_dtype)
    mesh, shardings = as_decoding_mesh(mesh), None
    if mesh is not None:
        weights, state, shardings = place_for_decoding(mesh, model, weights, state, enc,
                                                       batch_size * k)
    step = predict_step(model, accelerate, mesh, shardings)
    rng = fastmath.random.get_prng(0)
    tokens = onp.repeat(first_tokens(model, batch_size, start_id, prompt), k, axis=0)
    beams = _Beams.start(batch_size, k, max_length, eos_id, length_penalty)
    for t in range(max_length):
        if t == 0:
            logits, state, _ = start_decoding(model, step, with_inputs(enc, tokens), weights,
                                              state, rng, max_length - 1)
            enc = later_inputs(enc)
        else:
            logits, state = step(with_inputs(enc, tokens), weights, state, rng)
        logp = _log_softmax(onp.asarray(logits)).reshape(batch_size, k, -1)   # [B, K, V]
        parent_rows = beams.advance(logp, t)
        if parent_rows is None:
            break
        state = reorder_state(state, batch_mask, xnp.asarray(parent_rows))
        if mesh is not None:                  # the gathered rows back to the caches' split
            state = mesh.place(state, shardings)
        tokens = beams.last_tokens()
    return beams.fin_seqs, beams.fin_scores


def _beam_state(model: Layer, enc: Any, n_rows: int, cache_dtype: str | None = None
                ) -> tuple[Any, Any]:
    """(a fresh predict state for n_rows = B·K decoding rows, which of its leaves are per row)."""
    def signature_for(rows: int) -> Any:
        tok = shapes.ShapeDtype((rows, 1), onp.int32)
        return tok if enc is None else (shapes.ShapeDtype((rows,) + enc.shape[1:], enc.dtype), tok)

    return (init_predict_state(model, signature_for(n_rows), cache_dtype),
            batch_leaf_mask(model, signature_for, n_rows))


def _top_candidates(alive_scores: onp.ndarray, logp: onp.ndarray
                    ) -> tuple[onp.ndarray, onp.ndarray, onp.ndarray]:
    """The best min(2K, K·V) one-token extensions of the K alive beams of each batch row:
    (scores, parent beam, token), each [B, 2K], best first."""
    batch_size, k, vocab = logp.shape
    cand = (alive_scores[..., None] + logp).reshape(batch_size, k * vocab)
    top = onp.argsort(-cand, axis=1, kind='stable')[:, :min(2 * k, k * vocab)]   # [B, 2K]
    return (onp.take_along_axis(cand, top, 1), top // vocab,
            (top % vocab).astype(onp.int32))


@dataclasses.dataclass(eq=False)
class _Beams:
    """The K alive beams (without EOS) and the K best finished sequences of each batch row."""
    alive_scores: onp.ndarray    # [B, K] sums of log-probabilities
    alive_seqs: onp.ndarray      # [B, K, t]
    fin_scores: onp.ndarray      # [B, K] length-normalized, best first
    fin_seqs: onp.ndarray        # [B, K, max_length], 0 after the end
    eos_id: int | None
    length_penalty: float

    @classmethod
    def start(cls, batch_size: int, k: int, max_length: int, eos_id: int | None,
              length_penalty: float) -> '_Beams':
        alive_scores = onp.full((batch_size, k), -onp.inf)
        alive_scores[:, 0] = 0.0                          # all beams start identical: keep one
        return cls(alive_scores, onp.zeros((batch_size, k, 0), onp.int32),
                   onp.full((batch_size, k), -onp.inf),
                   onp.zeros((batch_size, k, max_length), onp.int32), eos_id, length_penalty)

    @property
    def _rows(self) -> onp.ndarray:
        return onp.arange(self.alive_scores.shape[0])[:, None]      # [B, 1]

    def advance(self, logp: onp.ndarray, t: int) -> onp.ndarray | None:
        """Extends the beams by token t from logp [B, K, V]; returns each new beam's parent
        row in [0, B·K) (to reorder the state by), or None when the search is over."""
        top_scores, parent, token = _top_candidates(self.alive_scores, logp)
        seqs = onp.concatenate([self.alive_seqs[self._rows, parent], token[..., None]], axis=2)
        is_eos = (token == self.eos_id if self.eos_id is not None
                  else onp.zeros_like(token, bool))
        last = t == self.fin_seqs.shape[2] - 1
        # Finished candidates: those that emit EOS, and every candidate at the last step.
        self._finish(seqs, top_scores, is_eos | last)
        if last:
            return None
        chosen_parent = self._keep_alive(seqs, top_scores, parent, is_eos)
        if self.eos_id is not None and self._cannot_improve():
            return None
        k = self.alive_scores.shape[1]
        return (self._rows * k + chosen_parent).reshape(-1).astype(onp.int32)

    def last_tokens(self) -> onp.ndarray:
        """[B·K, 1]: the last token of every alive beam, the next step's input."""
        return self.alive_seqs[:, :, -1].reshape(-1, 1)

    def _finish(self, seqs: onp.ndarray, top_scores: onp.ndarray, done: onp.ndarray) -> None:
        """Merges the done candidates (normalized by the length penalty) into the K best."""
        batch_size, n_cand, length = seqs.shape
        normalized = onp.where(done, top_scores / length_normalizer(length, self.length_penalty),
                               -onp.inf)
        padded = onp.zeros((batch_size, n_cand, self.fin_seqs.shape[2]), onp.int32)
        padded[:, :, :length] = seqs
        all_scores = onp.concatenate([self.fin_scores, normalized], 1)
        best = onp.argsort(-all_scores, axis=1, kind='stable')[:, :self.fin_scores.shape[1]]
        self.fin_scores = onp.take_along_axis(all_scores, best, 1)
        self.fin_seqs = onp.concatenate([self.fin_seqs, padded], 1)[self._rows, best]

    def _keep_alive(self, seqs: onp.ndarray, top_scores: onp.ndarray, parent: onp.ndarray,
                    is_eos: onp.ndarray) -> onp.ndarray:
        """Keeps the best K candidates that did not emit EOS; returns their parents [B, K]."""
        k = self.alive_scores.shape[1]
        alive_rank = onp.argsort(onp.where(is_eos, 1, 0), axis=1, kind='stable')[:, :k]
        self.alive_scores = onp.take_along_axis(onp.where(is_eos, -onp.inf, top_scores),
                                                alive_rank, 1)
        self.alive_seqs = seqs[self._rows, alive_rank]
        return onp.take_along_axis(parent, alive_rank, 1)

    def _cannot_improve(self) -> bool:
        """True when no alive beam can still beat the K-th finished one: log-probabilities
        only fall, so with a length penalty >= 0 an alive beam ends at most at its score over
        the normalizer of max_length."""
        bound = self.alive_scores.max(1) / length_normalizer(self.fin_seqs.shape[2],
                                                              self.length_penalty)
        return bool(onp.all(self.fin_scores[:, -1] >= bound)) and self.length_penalty >= 0
