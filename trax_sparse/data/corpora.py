"""Plain-text corpora: where data lives, reading text files, splitting them into examples.

Example:
    >>> split_paragraphs('Ber.\\nWho is there?\\n\\n\\nFran.\\nNay, answer me.\\n')
    ['Ber.\\nWho is there?', 'Fran.\\nNay, answer me.']
"""
import os
import re
from pathlib import Path

from trax_sparse.data.extras import install_command
from trax_sparse.io_utils import sha256_of  # noqa: F401 - re-exported for data users

DATA_DIR_ENV = 'TRAX_SPARSE_DATA_DIR'
_PARAGRAPH_BREAK = re.compile(r'\n[ \t\r\f\v]*\n')
_data_dir_override: Path | None = None


def user_data_dir() -> Path:
    """The per-user data dir: $XDG_DATA_HOME/trax_sparse, else ~/.local/share/trax_sparse."""
    xdg = os.environ.get('XDG_DATA_HOME')
    base = Path(xdg).expanduser() if xdg and os.path.isabs(xdg) else \
        Path.home() / '.local' / 'share'
    return base / 'trax_sparse'


def default_data_dir() -> Path:
    """Where datasets live, as TFDS's data_dir: the first of

    `set_data_dir(...)` (the trainer's --data_dir), $TRAX_SPARSE_DATA_DIR, `user_data_dir()`.

        >>> import os
        >>> os.environ['TRAX_SPARSE_DATA_DIR'] = '/tmp/my_data'
        >>> str(default_data_dir())
        '/tmp/my_data'
        >>> del os.environ['TRAX_SPARSE_DATA_DIR']
    """
    if _data_dir_override is not None:
        return _data_dir_override
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env).expanduser() if from_env else user_data_dir()


def set_data_dir(data_dir: str | os.PathLike | None) -> None:
    """Makes `data_dir` the process-wide default (None: back to env var / per-user dir)."""
    global _data_dir_override
    _data_dir_override = None if data_dir is None else Path(data_dir).expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data dir to use: the argument when given, else `default_data_dir()`."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def decode_utf8(data: bytes, source: str) -> str:
    """bytes -> str, or a ValueError naming `source` and the offset of the first bad byte."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as err:
        raise ValueError(f'{source} is not valid UTF-8 text: byte {data[err.start]:#04x} at offset '
                         f'{err.start} ({err.reason}); expected a UTF-8 encoded text') from None


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a non-empty UTF-8 file.

    Raises FileNotFoundError for a missing file, ValueError for an empty (or
    whitespace-only) file or for bytes that are not UTF-8; messages name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'text file {str(path)!r} does not exist (expected a UTF-8 text '
                                f'file)')
    text = decode_utf8(path.read_bytes(), f'text file {str(path)!r}')
    if not text.strip():
        raise ValueError(f'text file {str(path)!r} is empty; expected some UTF-8 text')
    return text


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs (blocks separated by blank lines), stripped, empty ones dropped."""
    text = text.replace('\r\n', '\n')
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def text_file_examples(path: str | os.PathLike, unit: str = 'paragraph') -> list[str]:
    """A text file as a list of examples: one per 'paragraph' or per non-empty 'line'."""
    if unit not in ('paragraph', 'line'):
        raise ValueError(f"text_file_examples: unit must be 'paragraph' or 'line', got {unit!r}")
    text = read_text_file(path)
    if unit == 'paragraph':
        return split_paragraphs(text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def import_tfds():
    """The tensorflow_datasets module, or an ImportError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(f'TFDS datasets need tensorflow-datasets and importlib_resources '
                          f'(not installed): {install_command(["data"])}') from err
    return tfds
