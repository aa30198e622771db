"""LM packing, seq2seq padding/bucketing, deterministic shuffling, sharding, exact resume."""
import json

import numpy as np
import pytest

from trax_sparse.data import (ByteTokenizer, ExampleSource, LMStream, Seq2SeqStream,
                              ShuffledOrder)

TOK = ByteTokenizer()
TEXTS = [f'paragraph {i}: ' + 'word ' * (i % 7) for i in range(23)]


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


def test_lm_stream_packs_eos_separated_tokens_into_rows():
    stream = LMStream(TEXTS, TOK, seq_len=16, batch_size=3, repeat=False)
    batches = list(stream)
    expected = np.concatenate([np.append(TOK.encode(t), 1) for t in TEXTS])   # [n_tokens]
    for inputs, targets, weights in batches:
        assert inputs.shape == targets.shape == weights.shape == (3, 16)
        assert (inputs.dtype, targets.dtype, weights.dtype) == (np.int32, np.int32, np.float32)
        np.testing.assert_array_equal(inputs, targets)
    inputs = np.concatenate([b[0] for b in batches]).reshape(-1)
    weights = np.concatenate([b[2] for b in batches]).reshape(-1)
    assert len(batches) == -(-len(expected) // 48)
    np.testing.assert_array_equal(inputs[weights == 1], expected)
    assert weights.sum() == len(expected) and (inputs[weights == 0] == 0).all()
    assert (weights[:len(expected)] == 1).all()                # padding only at the very end


def test_lm_stream_reads_dict_examples_and_repeats():
    examples = [{'text': t.encode()} for t in TEXTS[:3]]       # TFDS gives bytes features
    stream = LMStream(examples, TOK, seq_len=8, batch_size=2, text_key='text')
    n_tokens = sum(len(t) + 1 for t in TEXTS[:3])
    rows = np.concatenate([b[0] for b in _take(stream, 2 * n_tokens // 16 + 2)]).reshape(-1)
    np.testing.assert_array_equal(rows[:n_tokens], rows[n_tokens:2 * n_tokens])  # epoch 2 = 1
    with pytest.raises(ValueError, match="feature 'text' should be text"):
        next(LMStream([{'text': 3}], TOK, seq_len=4, batch_size=1, text_key='text'))
    with pytest.raises(ValueError, match='a whole epoch of 2 examples gave no tokens'):
        next(LMStream(['', ''], TOK, seq_len=4, batch_size=1, add_eos=False))
    with pytest.raises(ValueError, match='no examples to read'):
        LMStream([], TOK, seq_len=4, batch_size=1)
    with pytest.raises(ValueError, match='seq_len must be a positive integer, got 0'):
        LMStream(TEXTS, TOK, seq_len=0, batch_size=1)


def test_shuffled_order_is_a_seeded_permutation_per_epoch():
    for n in (1, 2, 7, 64, 1000):
        assert sorted(ShuffledOrder(n, seed=3)[i] for i in range(n)) == list(range(n))
    first = [ShuffledOrder(1000, seed=3, epoch=0)[i] for i in range(1000)]
    assert first == [ShuffledOrder(1000, seed=3, epoch=0)[i] for i in range(1000)]
    assert first != [ShuffledOrder(1000, seed=4, epoch=0)[i] for i in range(1000)]
    assert first != [ShuffledOrder(1000, seed=3, epoch=1)[i] for i in range(1000)]
    assert first != list(range(1000))
    assert ShuffledOrder(365_000_000, seed=0)[364_999_999] < 365_000_000   # c4-sized, no array


def test_shuffling_is_deterministic_from_the_seed():
    def run(seed):
        return _take(LMStream(TEXTS, TOK, seq_len=8, batch_size=2, seed=seed), 30)
    _assert_same_batches(run(1), run(1))
    assert not np.array_equal(np.stack([b[0] for b in run(1)]), np.stack([b[0] for b in run(2)]))
    source = ExampleSource(TEXTS, seed=5)
    epoch0 = [source.index(c) for c in range(23)]
    epoch1 = [source.index(c) for c in range(23, 46)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(23)) and epoch0 != epoch1


def test_shards_are_disjoint_and_cover_an_epoch():
    seen = []
    for k in range(3):
        source = ExampleSource(list(range(23)), seed=7, shard_index=k, shard_count=3)
        assert source.epoch_size == 7
        seen += [source[c] for c in range(7)]
    assert len(set(seen)) == 21
    with pytest.raises(ValueError, match='need 0 <= shard_index < shard_count, got 3 and 3'):
        ExampleSource(TEXTS, shard_index=3, shard_count=3)


@pytest.mark.parametrize('skip', [0, 1, 5])
def test_lm_resume_gives_the_same_next_batches(skip):
    stream = LMStream(TEXTS, TOK, seq_len=12, batch_size=2, seed=11)
    _take(stream, skip)
    state = json.loads(json.dumps(stream.state()))             # survives a JSON checkpoint
    expected = _take(stream, 8)
    fresh = LMStream(TEXTS, TOK, seq_len=12, batch_size=2, seed=11)
    fresh.restore(state)
    _assert_same_batches(_take(fresh, 8), expected)
    stream.restore(state)                                       # rewinding works too
    _assert_same_batches(_take(stream, 8), expected)


def test_restore_rejects_states_of_other_streams_or_configs():
    state = LMStream(TEXTS, TOK, seq_len=12, batch_size=2, seed=11).state()
    with pytest.raises(ValueError, match=r"with config \{'seq_len': 12.*this one has "
                                         r"\{'seq_len': 8"):
        LMStream(TEXTS, TOK, seq_len=8, batch_size=2, seed=11).restore(state)
    other = Seq2SeqStream([('a', 'b')], TOK, max_input_len=4, max_target_len=4, batch_size=1)
    with pytest.raises(ValueError, match='Seq2SeqStream.restore got the state of a LMStream'):
        other.restore(state)
    with pytest.raises(ValueError, match='expects a dict with keys kind, config, position'):
        other.restore({'position': 3})


PAIRS = [('x' * (1 + (7 * i) % 20), 'y' * (1 + (3 * i) % 6)) for i in range(17)]


def test_seq2seq_pads_to_max_lengths_and_truncates():
    stream = Seq2SeqStream(PAIRS, TOK, max_input_len=10, max_target_len=5, batch_size=4,
                           repeat=False)
    batches = list(stream)
    assert len(batches) == 5                                    # 17 examples, last batch padded
    got_inputs, got_targets = [], []
    for inputs, targets, weights in batches:
        assert inputs.shape == (4, 10) and targets.shape == weights.shape == (4, 5)
        np.testing.assert_array_equal(weights, (targets != 0).astype(np.float32))
        got_inputs += [r for r in inputs if r.any()]
        got_targets += [r for r in targets if r.any()]
    assert len(got_inputs) == len(got_targets) == 17
    for row, (inp, _) in zip(got_inputs, PAIRS):
        ids = np.append(TOK.encode(inp)[:9], 1)                # truncated to 9 + EOS
        np.testing.assert_array_equal(row[:len(ids)], ids)
        assert (row[len(ids):] == 0).all()
    for row, (_, tgt) in zip(got_targets, PAIRS):
        ids = np.append(TOK.encode(tgt)[:4], 1)
        np.testing.assert_array_equal(row[:len(ids)], ids)


def test_seq2seq_buckets_by_input_length():
    stream = Seq2SeqStream(PAIRS, TOK, max_input_len=24, max_target_len=8,
                           bucket_boundaries=[4, 12], bucket_batch_sizes=[4, 3, 2],
                           repeat=False, truncate=False)
    seen = []
    for inputs, targets, weights in stream:
        bound = inputs.shape[1]
        assert bound in (4, 12, 24) and inputs.shape[0] == {4: 4, 12: 3, 24: 2}[bound]
        lengths = (inputs != 0).sum(1)
        real = lengths > 0
        lower = {4: 0, 12: 4, 24: 12}[bound]
        assert ((lengths[real] > lower) & (lengths[real] <= bound)).all()
        assert targets.shape == (inputs.shape[0], 8) and (weights[~real] == 0).all()
        seen += [TOK.decode(r) for r in inputs[real]]
    assert sorted(seen) == sorted(p[0] for p in PAIRS)          # each example exactly once
    with pytest.raises(ValueError, match='bucket_batch_sizes needs 3 positive sizes'):
        Seq2SeqStream(PAIRS, TOK, max_input_len=24, max_target_len=8,
                      bucket_boundaries=[4, 12], bucket_batch_sizes=[4, 3])
    with pytest.raises(ValueError, match='bucket_boundaries must increase strictly'):
        Seq2SeqStream(PAIRS, TOK, max_input_len=10, max_target_len=8, batch_size=2,
                      bucket_boundaries=[4, 12])


def test_seq2seq_drops_too_long_examples_when_not_truncating():
    stream = Seq2SeqStream(PAIRS, TOK, max_input_len=6, max_target_len=8, batch_size=50,
                           repeat=False, truncate=False)
    (inputs, _, _), = list(stream)
    kept = [TOK.decode(r) for r in inputs if r.any()]
    assert kept == [p[0] for p in PAIRS if len(p[0]) + 1 <= 6]


@pytest.mark.parametrize('skip', [0, 2, 7])
def test_seq2seq_resume_with_partly_filled_buckets(skip):
    def make():
        return Seq2SeqStream(PAIRS, TOK, max_input_len=24, max_target_len=8,
                             bucket_boundaries=[4, 12], bucket_batch_sizes=[3, 3, 2], seed=2)
    stream = make()
    _take(stream, skip)
    state = json.loads(json.dumps(stream.state()))
    assert skip == 0 or any(state['position']['buckets'])     # examples are waiting in buckets
    expected = _take(stream, 10)
    fresh = make()
    fresh.restore(state)
    _assert_same_batches(_take(fresh, 10), expected)
