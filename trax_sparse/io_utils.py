"""Small file helpers shared by data and training (no other trax_sparse imports).

`sha256_of` hashes a file; `atomic_write` writes a file through a temporary file in the
same directory, fsync and os.replace, with the permissions the umask gives a new file
(0644 under umask 022, never the 0600 of a bare temp file); `check_writable_dir` creates
a directory and checks that a file can be written there and that it has room.

Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> atomic_write_text(os.path.join(d, 'a.txt'), 'hi')
    >>> sha256_of(os.path.join(d, 'a.txt'))[:12]
    '8f434346648f'
    >>> check_writable_dir(d, 'output_dir') == d
    True
"""
import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import BinaryIO, Callable

TEMP_PREFIX = '.tmp-'


class DirectoryError(ValueError):
    """A directory that cannot be created or written, or that has too little free space."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checks downloads and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process umask (from /proc on Linux, else by setting and restoring it)."""
    with contextlib.suppress(OSError, ValueError):
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: str) -> None:
    """fsync a directory (makes a rename durable); errors are ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Writes `path` atomically: temp file in the same directory, fsync, os.replace.

    The file gets mode 0666 & ~umask, as `open(path, 'w')` would give it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix='-' + os.path.basename(path),
                                dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
    """atomic_write of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def check_writable_dir(path: str | os.PathLike, what: str, need_bytes: int = 0) -> str:
    """Creates `path` if needed, checks a file can be written there and `need_bytes` fit.

    Returns the absolute path; raises DirectoryError naming `what` (e.g. 'output_dir').
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=TEMP_PREFIX + 'probe-')
        os.close(fd)
        os.remove(probe)
        free = shutil.disk_usage(path).free
    except OSError as e:
        raise DirectoryError(f'{what} {path} is not a writable directory: '
                             f'{e.strerror or e}') from e
    if need_bytes and free < need_bytes:
        raise DirectoryError(f'{what} {path} has {free / 2**20:.1f} MiB free; one checkpoint '
                             f'needs about {need_bytes / 2**20:.1f} MiB: free some space or '
                             f'choose another directory')
    return path


__all__ = ['DirectoryError', 'TEMP_PREFIX', 'atomic_write', 'atomic_write_text',
           'check_writable_dir', 'current_umask', 'fsync_dir', 'sha256_of']
