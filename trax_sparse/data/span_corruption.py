"""T5-style span corruption (the paper's C4 pretraining objective), in numpy.

About `noise_density` (0.15) of the tokens, in spans of mean length `mean_noise_span_length`
(3), are cut out of the inputs; each span is replaced by one sentinel id counted down from
the end of the vocabulary, and the targets list the spans, each after its sentinel. As in
T5 (`random_spans_noise_mask`, `noise_span_to_unique_sentinel`, `random_spans_helper`).

Example:
    >>> tokens = np.arange(2, 22, dtype=np.int32)
    >>> inputs, targets = span_corrupt(tokens, np.random.default_rng(0), vocab_size=100)
    >>> reconstruct_from_spans(inputs, targets, vocab_size=100, n_sentinels=10).tolist() == \
tokens.tolist()
    True
"""
from typing import Any, Sequence

import numpy as np

from trax_sparse.data.pipelines import nonpad_weights, pad_rows
from trax_sparse.data.streams import (ExampleSource, ResumableStream, TokenPacker,
                                      example_text, key_for_config)
from trax_sparse.data.tokenizers import Tokenizer


def noise_span_counts(length: int, noise_density: float,
                      mean_noise_span_length: float) -> tuple[int, int]:
    """(number of noise tokens, number of noise spans) for a sequence of `length` tokens."""
    length = max(length, 2)
    n_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_noise_span_length)), 1)
    return n_noise, n_spans


def _random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths [n_segments] of a uniformly random split of n_items into non-empty segments."""
    first_in_segment = np.concatenate(
        [[False], rng.permutation(np.arange(n_items - 1) < n_segments - 1)])
    segment_id = np.cumsum(first_in_segment)                       # [n_items]
    return np.bincount(segment_id, minlength=n_segments)           # [n_segments]


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """bool [length]: which tokens are noise; starts with non-noise, spans alternate."""
    padded_length = max(length, 2)
    n_noise, n_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(n_noise, n_spans, rng)                    # [S]
    nonnoise_lengths = _random_segmentation(padded_length - n_noise, n_spans, rng)  # [S]
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)   # [2S]
    span_starts = np.cumsum(interleaved)[:-1]
    is_span_start = np.zeros(padded_length, bool)
    is_span_start[span_starts] = True
    is_noise = np.cumsum(is_span_start) % 2 == 1
    return is_noise[:length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                  vocab_size: int) -> np.ndarray:
    """Each noise span -> one sentinel (vocab_size - 1, vocab_size - 2, ...); others kept."""
    previous_is_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise = noise_mask & ~previous_is_noise
    sentinels = vocab_size - np.cumsum(first_noise)                # [n]
    out = np.where(first_noise, sentinels, tokens)
    return out[~(noise_mask & previous_is_noise)].astype(np.int32)


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
                 noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of T5 span corruption, without EOS; sentinels from vocab_size - 1."""
    tokens = np.asarray(tokens, np.int32)
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_noise_span_length, rng)
    return (noise_span_to_unique_sentinel(tokens, mask, vocab_size),
            noise_span_to_unique_sentinel(tokens, ~mask, vocab_size))


def reconstruct_from_spans(inputs: Any, targets: Any, vocab_size: int,
                           n_sentinels: int) -> np.ndarray:
    """The original tokens from span_corrupt's (inputs, targets) (pad and EOS removed first)."""
    first_sentinel = vocab_size - n_sentinels
    spans: dict[int, list[int]] = {}
    current = None
    for t in np.asarray(targets).tolist():
        if t >= first_sentinel:
            current = spans.setdefault(t, [])
        elif current is None:
            raise ValueError('reconstruct_from_spans: targets must start with a sentinel')
        else:
            current.append(t)
    out = []
    for t in np.asarray(inputs).tolist():
        if t >= first_sentinel:
            if t not in spans:
                raise ValueError(f'reconstruct_from_spans: sentinel {t} of the inputs is '
                                 f'missing from the targets')
            out.extend(spans[t])
        else:
            out.append(t)
    return np.asarray(out, np.int32)


def span_corruption_lengths(input_len: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(raw tokens per example, target length) so that inputs + EOS fit in input_len.

    Like T5's random_spans_helper: the largest raw length whose corrupted inputs (kept
    tokens, one sentinel per span, EOS) fit, and its targets length (spans, sentinels, EOS).
    """
    def lengths(n: int) -> tuple[int, int]:
        n_noise, n_spans = noise_span_counts(n, noise_density, mean_noise_span_length)
        return n - n_noise + n_spans + 1, n_noise + n_spans + 1

    if input_len < 3:
        raise ValueError(f'span corruption needs input_len >= 3, got {input_len}')
    raw_len = 2
    while lengths(raw_len + 1)[0] <= input_len:
        raw_len += 1
    return raw_len, lengths(raw_len)[1]


class SpanCorruptionStream(ResumableStream):
    """Span-corruption batches: texts packed into raw chunks, each corrupted T5-style.

    Yields (inputs [B, input_len], targets [B, target_len], weights [B, target_len]) where
    target_len comes from `span_corruption_lengths`; both end with EOS and are padded. The
    tokenizer needs enough extra ids for the sentinels (`n_sentinels_needed`). Noise of
    chunk i is drawn from np.random.default_rng([noise_seed, shard_index, i]): resumable.

    Example:
        >>> from trax_sparse.data import ByteTokenizer
        >>> s = SpanCorruptionStream(['some text to corrupt'] * 4,
        ...                          ByteTokenizer(n_extra_ids=10), input_len=16, batch_size=2)
        >>> [a.shape for a in next(s)]
        [(2, 16), (2, 5), (2, 5)]
    """

    def __init__(self, examples: Sequence[Any], tokenizer: Tokenizer, input_len: int,
                 batch_size: int, *, text_key: Any = None, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0, seed: int | None = None,
                 noise_seed: int = 0, repeat: bool = True, shard_index: int = 0,
                 shard_count: int = 1):
        if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
            raise ValueError(f'SpanCorruptionStream: need 0 < noise_density < 1 and '
                             f'mean_noise_span_length >= 1, got {noise_density} and '
                             f'{mean_noise_span_length}')
        if int(batch_size) <= 0:
            raise ValueError(f'SpanCorruptionStream: batch_size must be positive, got '
                             f'{batch_size}')
        self.tokenizer, self.input_len, self.batch_size = tokenizer, int(input_len), int(batch_size)
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.text_key, self.noise_seed = text_key, int(noise_seed)
        self.raw_len, self.target_len = span_corruption_lengths(
            self.input_len, noise_density, mean_noise_span_length)
        self.n_sentinels_needed = noise_span_counts(self.raw_len, noise_density,
                                                    mean_noise_span_length)[1]
        if tokenizer.n_extra_ids < self.n_sentinels_needed:
            raise ValueError(f'SpanCorruptionStream: input_len={input_len} makes up to '
                             f'{self.n_sentinels_needed} noise spans, but the tokenizer has '
                             f'{tokenizer.n_extra_ids} extra ids for sentinels; create it with '
                             f'n_extra_ids >= {self.n_sentinels_needed}')
        self._source = ExampleSource(examples, seed, repeat, shard_index, shard_count)
        encode = lambda ex: tokenizer.encode(  # noqa: E731
            example_text(ex, text_key, 'SpanCorruptionStream'))
        self._packer = TokenPacker(self._source, encode, eos_id=None)
        self._chunk = 0

    def __next__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inputs, targets = [], []
        while len(inputs) < self.batch_size:
            raw = self._packer.take(self.raw_len)
            if not len(raw):
                break
            rng = np.random.default_rng([self.noise_seed, self._source.shard_index, self._chunk])
            self._chunk += 1
            corrupted_inputs, corrupted_targets = span_corrupt(
                raw, rng, self.tokenizer.vocab_size, self.noise_density,
                self.mean_noise_span_length)
            eos = np.int32(self.tokenizer.eos_id)
            inputs.append(np.append(corrupted_inputs, eos))
            targets.append(np.append(corrupted_targets, eos))
        if not inputs:
            raise StopIteration
        pad = self.tokenizer.pad_id
        return (pad_rows(inputs, self.batch_size, self.input_len, pad),            # [B, Li]
                pad_rows(targets, self.batch_size, self.target_len, pad),          # [B, Lt]
                nonpad_weights(targets, self.batch_size, self.target_len))         # [B, Lt]

    def config(self) -> dict:
        return {'input_len': self.input_len, 'batch_size': self.batch_size,
                'noise_density': self.noise_density,
                'mean_noise_span_length': self.mean_noise_span_length,
                'noise_seed': self.noise_seed, 'vocab_size': self.tokenizer.vocab_size,
                'text_key': key_for_config(self.text_key),
                **self._source.config()}

    def _position(self) -> dict:
        return {**self._packer.position(), 'chunk': int(self._chunk)}

    def _set_position(self, position: dict) -> None:
        self._packer.set_position(position)
        self._chunk = int(position['chunk'])
