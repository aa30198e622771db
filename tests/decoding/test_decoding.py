"""Sampling and beam search on a tiny predict-capable model (positions matter, so order counts)."""
import itertools

import numpy as np
import pytest

from trax_sparse import decoding, fastmath, shapes
from trax_sparse import layers as tl

VOCAB = 5


def tiny_lm(mode: str, vocab: int = VOCAB) -> tl.Layer:
    return tl.Serial(tl.ShiftRight(mode=mode), tl.Embedding(vocab, 8),
                     tl.PositionalEncoding(16, mode=mode), tl.Dense(16), tl.Relu(), tl.Dense(vocab))


def _models(batch: int = 2):
    ev, pr = tiny_lm('eval'), tiny_lm('predict')
    weights, _ = ev.init(shapes.ShapeDtype((batch, 4), np.int32), rng=fastmath.random.get_prng(3))
    pr.init(shapes.ShapeDtype((batch, 1), np.int32))
    pr.weights = weights
    return ev, pr


def test_greedy_equals_argmax_of_eval_logits(backend_name):
    ev, pr = _models()
    seq = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=6)
    logits, _ = ev.pure_fn(seq, ev.weights, ev.state)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), seq)
    # Decoding twice in a row gives the same tokens (state is never mutated).
    again = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=6)
    np.testing.assert_array_equal(seq, again)


def test_prompt_continuation_matches_eval(backend_name):
    ev, pr = _models()
    prompt = np.array([[1, 2], [3, 4]], np.int32)
    cont = decoding.autoregressive_sample(pr, prompt=prompt, temperature=0.0, max_length=3,
                                          batch_size=2)
    full = np.concatenate([prompt, cont], 1)
    logits, _ = ev.pure_fn(full, ev.weights, ev.state)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1)[:, 2:], cont)


def test_numpy_and_jax_give_the_same_greedy_tokens():
    ev, pr = _models()
    outs = []
    for name in ('numpy', 'jax'):
        with fastmath.use_backend(name):
            outs.append(decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0,
                                                       max_length=8))
    np.testing.assert_array_equal(*outs)


def test_sampling_is_reproducible_and_top_k_restricts(backend_name):
    _, pr = _models()
    key = fastmath.random.get_prng(11)
    a = decoding.autoregressive_sample(pr, batch_size=2, temperature=1.0, max_length=8, rng=key)
    b = decoding.autoregressive_sample(pr, batch_size=2, temperature=1.0, max_length=8, rng=key)
    np.testing.assert_array_equal(a, b)
    top1 = decoding.autoregressive_sample(pr, batch_size=2, temperature=5.0, top_k=1,
                                          max_length=6, rng=key)
    greedy = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=6)
    np.testing.assert_array_equal(top1, greedy)


def test_eos_stops_and_pads():
    ev, pr = _models()
    with fastmath.use_backend('numpy'):
        greedy = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=6)
        eos = int(greedy[0, 1])
        out = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=6,
                                             eos_id=eos)
    first = int(np.argmax(greedy[0] == eos))
    np.testing.assert_array_equal(out[0, :first + 1], greedy[0, :first + 1])
    assert np.all(out[0, first + 1:] == 0)


def _sequence_log_prob(ev, seq):
    logits, _ = ev.pure_fn(np.asarray(seq, np.int32)[None], ev.weights, ev.state)
    logp = np.asarray(logits[0], np.float64)
    logp = logp - np.log(np.exp(logp - logp.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logp.max(-1, keepdims=True)
    return sum(logp[t, s] for t, s in enumerate(seq))


def test_beam_1_equals_greedy(backend_name):
    _, pr = _models()
    seqs, _ = decoding.beam_search(pr, batch_size=2, beam_size=1, max_length=5)
    greedy = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=5)
    np.testing.assert_array_equal(seqs[:, 0], greedy)


def test_wide_beam_finds_the_brute_force_best(backend_name):
    ev, pr = _models(batch=1)
    scores = {s: _sequence_log_prob(ev, s) for s in itertools.product(range(VOCAB), repeat=3)}
    best = max(scores, key=scores.get)
    seqs, beam_scores = decoding.beam_search(pr, batch_size=1, beam_size=VOCAB ** 2, max_length=3)
    assert tuple(seqs[0, 0]) == best
    np.testing.assert_allclose(beam_scores[0, 0], scores[best], rtol=1e-5)
    ranked = sorted(scores.values(), reverse=True)[:VOCAB ** 2]
    np.testing.assert_allclose(beam_scores[0], ranked, rtol=1e-5)


def test_beam_with_eos_and_length_penalty():
    ev, pr = _models(batch=1)
    with fastmath.use_backend('numpy'):
        seqs, scores = decoding.beam_search(pr, batch_size=1, beam_size=4, max_length=4, eos_id=2,
                                            length_penalty=0.6)
    assert np.all(np.diff(scores[0]) <= 1e-12)            # best first
    for seq, score in zip(seqs[0], scores[0]):
        n = int(np.argmax(seq == 2)) + 1 if 2 in seq else 4
        assert np.all(seq[n:] == 0)
        expected = _sequence_log_prob(ev, list(seq[:n])) / decoding.length_normalizer(n, 0.6)
        np.testing.assert_allclose(score, expected, rtol=1e-5)


def test_uninitialized_model_and_bad_prompt_errors():
    with pytest.raises(ValueError, match='is not initialized'):
        decoding.autoregressive_sample(tiny_lm('predict'), max_length=2)
    _, pr = _models()
    with pytest.raises(ValueError, match=r'prompt must be token ids \[batch=2, length\]'):
        decoding.autoregressive_sample(pr, batch_size=2, prompt=np.array([1, 2]), max_length=2)
    with pytest.raises(ValueError, match='top_k must be in'):
        decoding.autoregressive_sample(pr, batch_size=2, top_k=9, max_length=2)
