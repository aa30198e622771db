"""T5 span corruption: noise fraction, span lengths, sentinels, reconstruction, stream shapes."""
import json

import numpy as np
import pytest

from trax_sparse.data import (ByteTokenizer, ExampleSource, SpanCorruptionStream,
                              random_spans_noise_mask, reconstruct_from_spans, span_corrupt,
                              span_corruption_lengths)

VOCAB = 1000


def _noise_spans(mask):
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    ends = np.flatnonzero(mask & ~np.concatenate([mask[1:], [False]]))
    return ends - starts + 1


def test_noise_mask_density_and_mean_span_length():
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(200):
        mask = random_spans_noise_mask(100, 0.15, 3.0, rng)
        assert mask.sum() == 15 and not mask[0]               # round(100 * .15); starts clean
        spans = _noise_spans(mask)
        assert len(spans) == 5 and (spans >= 1).all()         # round(15 / 3) spans
        lengths += spans.tolist()
    assert np.mean(lengths) == pytest.approx(3.0)
    assert len(set(lengths)) > 3                              # random span lengths, not all 3


def test_span_corrupt_sentinels_count_down_from_the_end_and_reconstruct():
    rng = np.random.default_rng(1)
    for length in (1, 2, 5, 37, 114, 500):
        tokens = rng.integers(2, VOCAB - 100, size=length).astype(np.int32)
        inputs, targets = span_corrupt(tokens, rng, VOCAB)
        in_sentinels = inputs[inputs >= VOCAB - 100]
        tgt_sentinels = targets[targets >= VOCAB - 100]
        n_spans = len(in_sentinels)
        np.testing.assert_array_equal(in_sentinels, VOCAB - 1 - np.arange(n_spans))
        np.testing.assert_array_equal(tgt_sentinels[:n_spans], in_sentinels)
        assert targets[0] == VOCAB - 1
        n_noise = len(targets) - len(tgt_sentinels)
        assert len(inputs) - n_spans == length - n_noise
        if length >= 20:
            assert abs(n_noise / length - 0.15) <= 0.5 / length + 1e-9
        np.testing.assert_array_equal(reconstruct_from_spans(inputs, targets, VOCAB, 100), tokens)


def test_lengths_helper_matches_t5():
    # T5's random_spans_helper(512, 0.15, 3) gives (568, 114).
    assert span_corruption_lengths(512) == (568, 114)
    raw, target = span_corruption_lengths(64)
    inputs, targets = span_corrupt(np.arange(raw) + 2, np.random.default_rng(0), VOCAB)
    assert len(inputs) + 1 <= 64 and len(targets) + 1 == target
    with pytest.raises(ValueError, match='input_len >= 3'):
        span_corruption_lengths(2)


def test_span_corruption_stream_batches_and_resume():
    tok = ByteTokenizer(n_extra_ids=8)
    texts = [f'document number {i} has some words in it.' for i in range(9)]

    def make():
        return SpanCorruptionStream(texts, tok, input_len=32, batch_size=3, seed=4)
    stream = make()
    raw_len, target_len = span_corruption_lengths(32)
    inputs, targets, weights = next(stream)
    assert inputs.shape == (3, 32) and targets.shape == weights.shape == (3, target_len)
    assert (inputs.dtype, targets.dtype, weights.dtype) == (np.int32, np.int32, np.float32)
    source = ExampleSource(texts, seed=4)                     # the stream's shuffled order
    packed = ''.join(texts[source.index(c)] for c in range(9))
    for i, (row_in, row_tgt) in enumerate(zip(inputs, targets)):
        restored = reconstruct_from_spans(row_in[row_in > 1], row_tgt[row_tgt > 1],
                                          tok.vocab_size, tok.n_extra_ids)
        assert tok.decode(restored) == packed[i * raw_len:(i + 1) * raw_len]
        assert row_in[(row_in != 0)][-1] == 1 and row_tgt[row_tgt != 0][-1] == 1   # EOS
    state = json.loads(json.dumps(stream.state()))
    expected = [next(stream) for _ in range(4)]
    fresh = make()
    fresh.restore(state)
    for a, b in zip(expected, [next(fresh) for _ in range(4)]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_span_corruption_stream_needs_enough_sentinels():
    with pytest.raises(ValueError, match=r'up to 28 noise spans, but the tokenizer has 0 extra '
                                         r'ids.*n_extra_ids >= 28'):
        SpanCorruptionStream(['text'], ByteTokenizer(), input_len=512, batch_size=1)
