"""Tiny LMs and deterministic streams for the training tests."""
import os
import signal
import time

import numpy as np

from trax_sparse import layers as tl

VOCAB = 11


LEARNING_RATE = 0.05  # the tests share one configuration, so their jit'd steps compile once


def TinyLM(vocab_size: int = VOCAB, d_model: int = 8, d_hidden: int = 16,  # noqa: N802
           dropout: float = 0.1, compute_dtype: str | None = None,
           mode: str = 'train') -> tl.Layer:
    """ShiftRight, Embedding, (Dropout), Dense, Relu, Dense(vocab): logits [B, L, vocab]."""
    return tl.Serial(tl.ShiftRight(mode=mode),
                     tl.Embedding(vocab_size, d_model, compute_dtype=compute_dtype),
                     tl.Dropout(dropout, mode=mode), tl.Dense(d_hidden), tl.Relu(),
                     tl.Dense(vocab_size))


def counting_batch(index: int, batch_size: int = 4, length: int = 6, vocab_size: int = VOCAB,
                   seed: int = 0):
    """Rows count up mod vocab from a random start: the next token is predictable."""
    start = np.random.default_rng([seed, index]).integers(0, vocab_size, (batch_size, 1))
    tokens = ((start + np.arange(length)) % vocab_size).astype(np.int32)
    weights = np.ones(tokens.shape, np.float32)
    weights[:, 0] = 0.0  # the first token is not predictable
    return tokens, tokens, weights


class CountingStream:
    """Endless counting batches with state()/restore(); optional delay per batch, NaN
    weights in batch `nan_at`, a signal (SIGTERM) to this process when batch `signal_at` is drawn.
    With shard_index/shard_count (multi-host) it yields its rows of the batch_size batch."""

    def __init__(self, batch_size: int = 4, length: int = 6, vocab_size: int = VOCAB,
                 seed: int = 0, delay_seconds: float = 0.0, nan_at: int | None = None,
                 signal_at: int | None = None, signal_name: str = 'SIGTERM',
                 signal_shard: int | None = None, shard_index: int = 0, shard_count: int = 1):
        self.batch_size, self.length, self.vocab_size, self.seed = (batch_size, length,
                                                                    vocab_size, seed)
        self.delay_seconds, self.nan_at, self.signal_at = delay_seconds, nan_at, signal_at
        self.signal = getattr(signal, signal_name)
        if signal_shard is not None and signal_shard != shard_index:
            self.signal_at = None  # only the process reading shard `signal_shard` is signalled
        rows = batch_size // shard_count
        self.rows = slice(shard_index * rows, (shard_index + 1) * rows)
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = tuple(x[self.rows] for x in counting_batch(
            self.index, self.batch_size, self.length, self.vocab_size, self.seed))
        if self.nan_at is not None and self.index == self.nan_at:
            batch[2][:] = np.nan
        if self.signal_at is not None and self.index == self.signal_at:
            os.kill(os.getpid(), self.signal)  # as `kill PID` (or ^C) while this batch trains
        self.index += 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return batch

    def state(self) -> dict:
        return {'index': self.index}

    def restore(self, state: dict) -> None:
        self.index = int(state['index'])


def plain_stream(batch_size: int = 4, seed: int = 0):
    """The same batches as CountingStream, from a generator without state()."""
    index = 0
    while True:
        yield counting_batch(index, batch_size, seed=seed)
        index += 1
