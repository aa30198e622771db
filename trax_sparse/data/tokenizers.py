"""Tokenizers: byte-level and SentencePiece, both with pad 0 and EOS 1 reserved.

Both map text to int32 ids and back, and may add `n_extra_ids` ids at the END of the
vocabulary; those are T5's sentinels (`sentinel_id(0) == vocab_size - 1`), used by span
corruption.

Example:
    >>> tok = ByteTokenizer()
    >>> ids = tok.encode('hé')
    >>> ids.tolist(), tok.decode(ids), tok.vocab_size
    ([106, 197, 171], 'hé', 258)
"""
import abc
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

PAD_ID = 0
EOS_ID = 1


class Tokenizer(abc.ABC):
    """text <-> int32 ids; `pad_id` 0 and `eos_id` 1; sentinels at the end of the vocabulary."""

    pad_id = PAD_ID
    eos_id = EOS_ID

    def __init__(self, n_extra_ids: int = 0):
        if int(n_extra_ids) < 0:
            raise ValueError(f'{type(self).__name__}: n_extra_ids must be >= 0, got {n_extra_ids}')
        self.n_extra_ids = int(n_extra_ids)

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, extra ids included."""

    @abc.abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """text -> int32 ids [n] (no EOS added)."""

    @abc.abstractmethod
    def _decode_base(self, ids: np.ndarray, errors: str) -> str:
        """ids below the extra ids -> text."""

    def sentinel_id(self, index: int) -> int:
        """The id of sentinel `index` (T5's <extra_id_index>): vocab_size - 1 - index."""
        if not 0 <= index < self.n_extra_ids:
            raise ValueError(f'{type(self).__name__} has {self.n_extra_ids} extra ids; sentinel '
                             f'{index} does not exist')
        return self.vocab_size - 1 - index

    def decode(self, ids: Any, errors: str = 'strict') -> str:
        """ids -> text; pad and EOS are skipped, sentinels are written '<extra_id_k>'.

        errors='strict' raises ValueError for ids that do not decode to UTF-8 text;
        'replace' writes U+FFFD instead (useful for raw model samples).
        """
        ids = np.asarray(ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f'{type(self).__name__}.decode expects integer ids, got {ids.dtype}')
        ids = ids.astype(np.int64)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(f'{type(self).__name__}.decode: id {int(bad[0])} is outside the '
                             f'vocabulary [0, {self.vocab_size})')
        first_extra = self.vocab_size - self.n_extra_ids
        pieces, start = [], 0
        for i in np.flatnonzero(ids >= first_extra):
            pieces.append(self._decode_base(ids[start:i], errors))
            pieces.append(f'<extra_id_{self.vocab_size - 1 - int(ids[i])}>')
            start = i + 1
        pieces.append(self._decode_base(ids[start:], errors))
        return ''.join(pieces)


def _check_text(tokenizer: Tokenizer, text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f'{type(tokenizer).__name__}.encode expects str, got '
                        f'{type(text).__name__} (decode bytes as UTF-8 first)')
    return text


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids: id = byte + n_reserved (pad 0, EOS 1, and more reserved ids)."""

    def __init__(self, n_reserved: int = 2, n_extra_ids: int = 0):
        super().__init__(n_extra_ids)
        if int(n_reserved) < 2:
            raise ValueError(f'ByteTokenizer needs n_reserved >= 2 (pad 0 and EOS 1), got '
                             f'{n_reserved}')
        self.n_reserved = int(n_reserved)

    @property
    def vocab_size(self) -> int:
        return self.n_reserved + 256 + self.n_extra_ids

    def encode(self, text: str) -> np.ndarray:
        raw = np.frombuffer(_check_text(self, text).encode('utf-8'), np.uint8)
        return raw.astype(np.int32) + self.n_reserved              # [n]

    def _decode_base(self, ids: np.ndarray, errors: str) -> str:
        data = (ids[ids >= self.n_reserved] - self.n_reserved).astype(np.uint8).tobytes()
        try:
            return data.decode('utf-8', errors=errors)
        except UnicodeDecodeError as err:
            raise ValueError(f'ByteTokenizer.decode: the ids are not UTF-8 text (byte '
                             f'{data[err.start]:#04x} at byte offset {err.start}: {err.reason}); '
                             f"pass errors='replace' to decode model samples") from None


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (serialized proto) with pad 0, EOS 1 (and unk 2 when trained here)."""

    def __init__(self, model_proto: bytes, n_extra_ids: int = 0, source: str = 'model proto'):
        super().__init__(n_extra_ids)
        import sentencepiece as spm
        try:
            processor = spm.SentencePieceProcessor(model_proto=bytes(model_proto))
        except RuntimeError as err:
            raise ValueError(f'{source} is not a valid SentencePiece model ({err})') from None
        if processor.get_piece_size() == 0:
            raise ValueError(f'{source} is not a valid SentencePiece model (it has no pieces)')
        if processor.pad_id() != PAD_ID or processor.eos_id() != EOS_ID:
            raise ValueError(f'{source}: expected pad id {PAD_ID} and EOS id {EOS_ID}, the model '
                             f'has pad {processor.pad_id()} and EOS {processor.eos_id()} (train '
                             f'it with train_sentencepiece)')
        self._processor, self._proto = processor, bytes(model_proto)

    @classmethod
    def load(cls, path: str | os.PathLike, n_extra_ids: int = 0) -> 'SentencePieceTokenizer':
        """Reads a .model file; FileNotFoundError / ValueError name the file when it is bad."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'SentencePiece model file {str(path)!r} does not exist '
                                    f'(expected a .model file written by '
                                    f'SentencePieceTokenizer.save or spm_train)')
        return cls(path.read_bytes(), n_extra_ids, source=f'SentencePiece model file '
                                                          f'{str(path)!r}')

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the model file atomically (temp file + rename); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
        with os.fdopen(fd, 'wb') as f:
            f.write(self._proto)
        os.replace(tmp, path)
        return path

    @property
    def model_proto(self) -> bytes:
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size() + self.n_extra_ids

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._processor.encode(_check_text(self, text)), np.int32)  # [n]

    def _decode_base(self, ids: np.ndarray, errors: str) -> str:
        return self._processor.decode([int(i) for i in ids])


def load_sentencepiece(path: str | os.PathLike, n_extra_ids: int = 0) -> SentencePieceTokenizer:
    """SentencePieceTokenizer.load as a plain function (for gin: `@load_sentencepiece()`)."""
    return SentencePieceTokenizer.load(os.path.expanduser(str(path)), n_extra_ids)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = 'unigram',
                        n_extra_ids: int = 0, byte_fallback: bool = True,
                        character_coverage: float = 1.0, num_threads: int = 2,
                        **trainer_options: Any) -> SentencePieceTokenizer:
    """Trains a SentencePiece model in memory from an iterable of texts.

    The model is lossless on any text: identity normalization, whitespace kept, '\\n' a
    piece of its own and, with `byte_fallback`, unknown characters spelled as bytes (then
    `vocab_size` must be at least about 260 + the number of distinct characters).
    Pad is 0, EOS 1, unk 2, no BOS. `vocab_size` is a soft limit: small corpora give less.

    Example:
        >>> tok = train_sentencepiece(['the cat sat', 'the hat'] * 10, vocab_size=40,
        ...                           byte_fallback=False)
        >>> tok.decode(tok.encode('the cat'))
        'the cat'
    """
    import sentencepiece as spm
    if model_type not in ('unigram', 'bpe', 'char', 'word'):
        raise ValueError(f"train_sentencepiece: model_type must be 'unigram', 'bpe', 'char' or "
                         f"'word', got {model_type!r}")
    texts = (_check_text_for_training(t) for t in texts)
    first = next(texts, None)
    if first is None:
        raise ValueError('train_sentencepiece: the corpus is empty; expected an iterable of texts')
    writer = io.BytesIO()
    options = dict(vocab_size=int(vocab_size), model_type=model_type, pad_id=PAD_ID,
                   eos_id=EOS_ID, unk_id=2, bos_id=-1, normalization_rule_name='identity',
                   remove_extra_whitespaces=False, user_defined_symbols=['\n'],
                   byte_fallback=byte_fallback, character_coverage=character_coverage,
                   hard_vocab_limit=False, num_threads=num_threads, minloglevel=2)
    options.update(trainer_options)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=_chain_first(first, texts),
                                       model_writer=writer, **options)
    except RuntimeError as err:
        raise ValueError(f'train_sentencepiece failed: {err}') from None
    return SentencePieceTokenizer(writer.getvalue(), n_extra_ids, source='trained model')


def _check_text_for_training(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f'train_sentencepiece expects str texts, got {type(text).__name__}')
    return text


def _chain_first(first: str, rest: Iterable[str]):
    yield first
    yield from rest
