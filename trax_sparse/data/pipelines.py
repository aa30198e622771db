"""Resumable batch pipelines (numpy only): LM packing and seq2seq with length bucketing.

Both yield (inputs, targets, weights) int32/int32/float32 batches with static shapes, shuffle
deterministically from a seed, and save/restore their position with `state()`/`restore()`.

Example:
    >>> from trax_sparse.data import ByteTokenizer, LMStream
    >>> stream = LMStream(['to be', 'or not'], ByteTokenizer(), seq_len=4, batch_size=2)
    >>> inputs, targets, weights = next(stream)
    >>> inputs.tolist(), bool((inputs == targets).all()), weights.dtype.name
    ([[118, 113, 34, 100], [103, 1, 113, 116]], True, 'float32')
"""
from typing import Any, Sequence

import numpy as np

from trax_sparse.data.streams import (EndOfData, ExampleSource, ResumableStream, TokenPacker,
                                      example_text, key_for_config)
from trax_sparse.data.tokenizers import Tokenizer


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if int(value) <= 0:
            raise ValueError(f'{owner}: {name} must be a positive integer, got {value}')


def pad_rows(rows: Sequence[np.ndarray], n_rows: int, length: int, pad_id: int) -> np.ndarray:
    """Stacks 1-D int rows into [n_rows, length], padding with pad_id (missing rows too)."""
    out = np.full((n_rows, length), pad_id, np.int32)      # [B, L]
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def nonpad_weights(rows: Sequence[np.ndarray], n_rows: int, length: int) -> np.ndarray:
    """float32 [n_rows, length]: 1 on the real tokens of each row, 0 on padding."""
    weights = np.zeros((n_rows, length), np.float32)       # [B, L]
    for i, row in enumerate(rows):
        weights[i, :len(row)] = 1.0
    return weights


class LMStream(ResumableStream):
    """Language-model batches: texts tokenized, EOS-separated, packed into rows of seq_len.

    Yields (inputs [B, L], targets [B, L], weights [B, L]); inputs == targets (Trax
    convention: the model shifts right itself) and weights are 1 except on the padding of
    the last, partial batch of a non-repeating stream.

    Args:
        examples: random-access sequence (list, TFDS data source) of texts or dicts.
        tokenizer: a Tokenizer.
        seq_len, batch_size: the batch shape [batch_size, seq_len].
        text_key: feature holding the text (None: the example is the text).
        seed: shuffles examples per epoch deterministically; None keeps their order.
        repeat: loop over the examples forever (else stop after one epoch).
        add_eos: append EOS after each example.
        shard_index, shard_count: read only this shard of the examples (multi-host).
    """

    def __init__(self, examples: Sequence[Any], tokenizer: Tokenizer, seq_len: int,
                 batch_size: int, *, text_key: Any = None, seed: int | None = None,
                 repeat: bool = True, add_eos: bool = True, shard_index: int = 0,
                 shard_count: int = 1):
        _check_positive('LMStream', seq_len=seq_len, batch_size=batch_size)
        self.tokenizer, self.seq_len, self.batch_size = tokenizer, int(seq_len), int(batch_size)
        self.text_key, self.add_eos = text_key, add_eos
        self._source = ExampleSource(examples, seed, repeat, shard_index, shard_count)
        encode = lambda ex: tokenizer.encode(example_text(ex, text_key, 'LMStream'))  # noqa: E731
        self._packer = TokenPacker(self._source, encode, tokenizer.eos_id if add_eos else None)

    def __next__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = []
        while len(rows) < self.batch_size:
            row = self._packer.take(self.seq_len)
            if not len(row):
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        inputs = pad_rows(rows, self.batch_size, self.seq_len, self.tokenizer.pad_id)  # [B, L]
        weights = nonpad_weights(rows, self.batch_size, self.seq_len)                  # [B, L]
        return inputs, inputs.copy(), weights

    def config(self) -> dict:
        return {'seq_len': self.seq_len, 'batch_size': self.batch_size,
                'vocab_size': self.tokenizer.vocab_size, 'text_key': key_for_config(self.text_key),
                'add_eos': self.add_eos, **self._source.config()}

    def _position(self) -> dict:
        return self._packer.position()

    def _set_position(self, position: dict) -> None:
        self._packer.set_position(position)


class Seq2SeqStream(ResumableStream):
    """Input/target batches with padding and length bucketing.

    Each example gives input ids and target ids (each truncated to its max length minus one,
    then EOS appended). Examples are grouped by input length into buckets with upper bounds
    `bucket_boundaries + [max_input_len]`; a bucket that holds its batch size of examples is
    emitted with inputs padded to the bucket's bound and targets to max_target_len. Bucket b
    holds input lengths in (bound[b-1], bound[b]].

    Yields (inputs [B_b, bound_b], targets [B_b, max_target_len], weights [B_b,
    max_target_len]), weights 1 on real target tokens. At the end of a non-repeating stream
    the partly filled buckets are emitted, padded with all-pad rows (weight 0).

    Example:
        >>> from trax_sparse.data import ByteTokenizer
        >>> pairs = [('a', 'x'), ('long input', 'y'), ('b', 'zz')]
        >>> s = Seq2SeqStream(pairs, ByteTokenizer(), max_input_len=16, max_target_len=4,
        ...                   batch_size=2, bucket_boundaries=[4], repeat=False)
        >>> [b[0].shape for b in s]
        [(2, 4), (2, 16)]
    """

    def __init__(self, examples: Sequence[Any], tokenizer: Tokenizer, *, max_input_len: int,
                 max_target_len: int, batch_size: int | None = None, input_key: Any = 0,
                 target_key: Any = 1, bucket_boundaries: Sequence[int] = (),
                 bucket_batch_sizes: Sequence[int] | None = None, seed: int | None = None,
                 repeat: bool = True, truncate: bool = True,
                 target_tokenizer: Tokenizer | None = None, shard_index: int = 0,
                 shard_count: int = 1):
        _check_positive('Seq2SeqStream', max_input_len=max_input_len,
                        max_target_len=max_target_len)
        bounds = [int(b) for b in bucket_boundaries] + [int(max_input_len)]
        if any(b <= a for a, b in zip(bounds, bounds[1:])) or bounds[0] <= 0:
            raise ValueError(f'Seq2SeqStream: bucket_boundaries must increase strictly, be '
                             f'positive and below max_input_len={max_input_len}, got '
                             f'{list(bucket_boundaries)}')
        if bucket_batch_sizes is None:
            if batch_size is None:
                raise ValueError('Seq2SeqStream needs batch_size or bucket_batch_sizes')
            bucket_batch_sizes = [batch_size] * len(bounds)
        if len(bucket_batch_sizes) != len(bounds) or min(bucket_batch_sizes) <= 0:
            raise ValueError(f'Seq2SeqStream: bucket_batch_sizes needs {len(bounds)} positive '
                             f'sizes (one per bucket, len(bucket_boundaries) + 1), got '
                             f'{list(bucket_batch_sizes)}')
        self.tokenizer = tokenizer
        self.target_tokenizer = target_tokenizer or tokenizer
        self.max_input_len, self.max_target_len = int(max_input_len), int(max_target_len)
        self.input_key, self.target_key, self.truncate = input_key, target_key, truncate
        self.bounds, self.batch_sizes = bounds, [int(b) for b in bucket_batch_sizes]
        self._source = ExampleSource(examples, seed, repeat, shard_index, shard_count)
        self._next = 0
        self._buckets: list[list[int]] = [[] for _ in bounds]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _tokens(self, counter: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids + EOS, target ids + EOS) of the example at `counter`, truncated."""
        if counter not in self._cache:
            example = self._source[counter]
            pair = []
            for key, tok, max_len in ((self.input_key, self.tokenizer, self.max_input_len),
                                      (self.target_key, self.target_tokenizer,
                                       self.max_target_len)):
                ids = tok.encode(example_text(example, key, 'Seq2SeqStream'))
                if self.truncate:
                    ids = ids[:max_len - 1]
                pair.append(np.append(ids, np.int32(tok.eos_id)).astype(np.int32))
            self._cache[counter] = tuple(pair)
        return self._cache[counter]

    def _bucket_of(self, input_len: int) -> int:
        return int(np.searchsorted(self.bounds, input_len))   # first bound >= input_len

    def _emit(self, bucket: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pairs = [self._cache.pop(c) for c in self._buckets[bucket]]
        self._buckets[bucket] = []
        n_rows = self.batch_sizes[bucket]
        inputs = pad_rows([p[0] for p in pairs], n_rows, self.bounds[bucket],
                          self.tokenizer.pad_id)                                   # [B, Lb]
        targets = [p[1] for p in pairs]
        return (inputs, pad_rows(targets, n_rows, self.max_target_len,
                                 self.target_tokenizer.pad_id),                    # [B, Lt]
                nonpad_weights(targets, n_rows, self.max_target_len))              # [B, Lt]

    def __next__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while True:
            try:
                inputs, targets = self._tokens(self._next)
            except EndOfData:
                for bucket, members in enumerate(self._buckets):
                    if members:
                        return self._emit(bucket)
                raise StopIteration from None
            counter, self._next = self._next, self._next + 1
            if len(inputs) > self.max_input_len or len(targets) > self.max_target_len:
                del self._cache[counter]                   # too long and truncate=False
                continue
            bucket = self._bucket_of(len(inputs))
            self._buckets[bucket].append(counter)
            if len(self._buckets[bucket]) == self.batch_sizes[bucket]:
                return self._emit(bucket)

    def config(self) -> dict:
        return {'max_input_len': self.max_input_len, 'max_target_len': self.max_target_len,
                'bounds': self.bounds, 'batch_sizes': self.batch_sizes,
                'input_key': key_for_config(self.input_key),
                'target_key': key_for_config(self.target_key),
                'truncate': self.truncate, 'vocab_size': self.tokenizer.vocab_size,
                'target_vocab_size': self.target_tokenizer.vocab_size, **self._source.config()}

    def _position(self) -> dict:
        return {'next': int(self._next), 'buckets': [[int(c) for c in b] for b in self._buckets]}

    def _set_position(self, position: dict) -> None:
        buckets = [list(map(int, b)) for b in position['buckets']]
        if len(buckets) != len(self.bounds):
            raise ValueError(f'Seq2SeqStream.restore: the state has {len(buckets)} buckets, '
                             f'expected {len(self.bounds)}')
        self._next, self._buckets, self._cache = int(position['next']), buckets, {}
        for members in buckets:
            for counter in members:
                self._tokens(counter)
