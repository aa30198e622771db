"""Building blocks of resumable pipelines: shuffled example access, packing, stream state.

A stream reads its examples by a global counter (the n-th example it has drawn); the
counter maps to (epoch, position) and, through a seeded permutation of each epoch, to an
index of the random-access examples. So a stream's whole position is a few integers:
`state()` returns them as a JSON-serializable dict and `restore(state)` jumps back.

Example:
    >>> order = ShuffledOrder(5, seed=0, epoch=0)
    >>> sorted(order[i] for i in range(5))
    [0, 1, 2, 3, 4]
"""
import abc
from typing import Any, Callable, Sequence

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a fast, well-mixing bijection on 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class ShuffledOrder:
    """A seeded pseudo-random permutation of range(n), evaluated per index in O(1) memory.

    A 6-round Feistel network on the smallest even number of bits covering n, with cycle
    walking for values >= n, so even c4's 365M examples shuffle without a permutation array.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, rounds: int = 6):
        if n <= 0:
            raise ValueError(f'ShuffledOrder needs n > 0, got {n}')
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self._n, self._half, self._low_mask = n, bits // 2, (1 << (bits // 2)) - 1
        base = _mix64(_mix64(int(seed) & _MASK64) ^ int(epoch))
        self._round_keys = [_mix64(base + r) for r in range(rounds)]

    def _encrypt(self, x: int) -> int:
        left, right = x >> self._half, x & self._low_mask
        for key in self._round_keys:
            left, right = right, left ^ (_mix64(right ^ key) & self._low_mask)
        return (left << self._half) | right

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise IndexError(f'ShuffledOrder index {i} out of range [0, {self._n})')
        x = self._encrypt(i)
        while x >= self._n:
            x = self._encrypt(x)
        return x


class EndOfData(Exception):
    """A non-repeating source has no example at this counter."""


class ExampleSource:
    """The n-th example of a seeded, epoch-wise shuffled (and optionally sharded) sequence.

    Epoch e visits each example of this shard once, in the order of ShuffledOrder(seed, e);
    seed None keeps the stored order. Shard k of K sees positions k, k + K, ... of each
    epoch's order (len(examples) // K of them; the remainder differs per shuffled epoch).
    """

    def __init__(self, examples: Sequence[Any], seed: int | None = None, repeat: bool = True,
                 shard_index: int = 0, shard_count: int = 1):
        n = len(examples)
        if not 0 <= shard_index < shard_count:
            raise ValueError(f'ExampleSource: need 0 <= shard_index < shard_count, got '
                             f'{shard_index} and {shard_count}')
        if n // shard_count == 0:
            raise ValueError(f'ExampleSource: no examples to read ({n} examples, {shard_count} '
                             f'shards); expected a non-empty sequence')
        self.examples, self.seed, self.repeat = examples, seed, repeat
        self.shard_index, self.shard_count = shard_index, shard_count
        self.epoch_size = n // shard_count
        self._order_epoch, self._order = None, None

    def index(self, counter: int) -> int:
        """The index into `examples` of the example read at `counter`."""
        epoch, position = divmod(counter, self.epoch_size)
        if epoch > 0 and not self.repeat:
            raise EndOfData(counter)
        position = position * self.shard_count + self.shard_index
        if self.seed is None:
            return position
        if self._order_epoch != epoch:
            self._order_epoch = epoch
            self._order = ShuffledOrder(len(self.examples), self.seed, epoch)
        return self._order[position]

    def __getitem__(self, counter: int) -> Any:
        return self.examples[self.index(counter)]

    def config(self) -> dict:
        return {'n_examples': len(self.examples), 'seed': self.seed, 'repeat': self.repeat,
                'shard': [self.shard_index, self.shard_count]}


def example_text(example: Any, key: Any, where: str) -> str:
    """The text feature `key` of an example (None: the example itself); bytes are UTF-8."""
    value = example if key is None else example[key]
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode('utf-8')
        except UnicodeDecodeError as err:
            raise ValueError(f'{where}: feature {key!r} is not UTF-8 text (byte offset '
                             f'{err.start}: {err.reason})') from None
    if not isinstance(value, str):
        raise ValueError(f'{where}: feature {key!r} should be text (str or UTF-8 bytes), got '
                         f'{type(value).__name__}; pass the right text key')
    return value


def key_for_config(key: Any) -> Any:
    """A feature key as a JSON value for a stream's config."""
    return key if key is None or isinstance(key, (int, str)) else repr(key)


class TokenPacker:
    """Concatenates the token ids of consecutive examples and cuts them into pieces.

    Its position is (example counter, tokens already taken from that example).
    """

    def __init__(self, source: ExampleSource, encode: Callable[[Any], np.ndarray],
                 eos_id: int | None):
        self._source, self._encode, self._eos_id = source, encode, eos_id
        self.example, self.offset = 0, 0
        self._tokens: np.ndarray | None = None

    def _load(self) -> np.ndarray:
        if self._tokens is None:
            tokens = np.asarray(self._encode(self._source[self.example]), np.int32)
            if self._eos_id is not None:
                tokens = np.append(tokens, np.int32(self._eos_id))
            self._tokens = tokens
        return self._tokens

    def take(self, n: int) -> np.ndarray:
        """The next n tokens [n] (fewer only when a non-repeating source runs out)."""
        pieces, need, empty_in_a_row = [], n, 0
        while need:
            try:
                tokens = self._load()
            except EndOfData:
                break
            piece = tokens[self.offset:self.offset + need]
            pieces.append(piece)
            need -= len(piece)
            self.offset += len(piece)
            empty_in_a_row = 0 if len(piece) else empty_in_a_row + 1
            if empty_in_a_row > self._source.epoch_size:
                raise ValueError(f'TokenPacker: a whole epoch of {self._source.epoch_size} '
                                 f'examples gave no tokens; expected some non-empty text')
            if self.offset == len(tokens):
                self.example, self.offset, self._tokens = self.example + 1, 0, None
        return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)

    def position(self) -> dict:
        return {'example': int(self.example), 'offset': int(self.offset)}

    def set_position(self, position: dict) -> None:
        self.example, self.offset = int(position['example']), int(position['offset'])
        self._tokens = None


class ResumableStream(abc.ABC):
    """An iterator of batches whose position is saved by `state()` and set by `restore()`.

    After `restore(s)` the stream yields exactly the batches it yielded after `state()`
    returned `s`, in any process, given the same examples and constructor arguments.
    """

    @abc.abstractmethod
    def __next__(self) -> tuple[np.ndarray, ...]:
        """The next batch."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-serializable hyper-parameters; restore() refuses states of another config."""

    @abc.abstractmethod
    def _position(self) -> dict:
        """JSON-serializable position."""

    @abc.abstractmethod
    def _set_position(self, position: dict) -> None:
        """Moves to a position returned by _position()."""

    def __iter__(self) -> 'ResumableStream':
        return self

    def state(self) -> dict:
        """{'kind', 'config', 'position'}, JSON-serializable."""
        return {'kind': type(self).__name__, 'config': self.config(),
                'position': self._position()}

    def restore(self, state: dict) -> None:
        """Continues from `state` (from `state()` of a stream built the same way)."""
        if not isinstance(state, dict) or set(state) != {'kind', 'config', 'position'}:
            raise ValueError(f'{type(self).__name__}.restore expects a dict with keys kind, '
                             f'config, position (from state()), got {state!r:.200}')
        if state['kind'] != type(self).__name__:
            raise ValueError(f'{type(self).__name__}.restore got the state of a '
                             f'{state["kind"]}')
        if _jsonish(state['config']) != _jsonish(self.config()):
            raise ValueError(f'{type(self).__name__}.restore: the state was saved by a stream '
                             f'with config {state["config"]}, this one has {self.config()}')
        self._set_position(state['position'])


def _jsonish(value: Any) -> Any:
    """Tuples as lists, so that a state that went through JSON compares equal."""
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonish(v) for v in value]
    return value
