"""Pieces of arrays in checkpoint shard files: naming, writing, and reading slices back.

A checkpoint (format version 3, `checkpoint.py`) stores each array as pieces: rectangular
slices `(start, shape)` that tile it, each written once by one process into that process's
shard file (an uncompressed `np.savez` archive). A piece that is the whole array is stored
under the array's key ('weights/3/0'), a smaller one under key@start ('weights/3/0@0,512').

`PieceReader` reads any slice of an array from the pieces that overlap it: a member of an
uncompressed archive is memory-mapped, so only the bytes of the slice are read. That is
how a checkpoint restores onto another mesh: each device reads the slice it needs.

Example:
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), 'p.npz')
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 4)
    >>> write_pieces(path, {piece_name('w', (0, 0), x.shape, x.shape): x})
    >>> reader = PieceReader('w', 'float32', [3, 4], [(path, (0, 0), (3, 4))])
    >>> reader[1:, 2:].tolist()
    [[6.0, 7.0], [10.0, 11.0]]
"""
import os
import zipfile
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse.io_utils import atomic_write, sha256_of


class PieceError(Exception):
    """A shard file or piece that does not hold what the metadata says."""


def piece_name(key: str, start: Sequence[int], shape: Sequence[int],
               array_shape: Sequence[int]) -> str:
    """The archive member name of a piece: `key` for the whole array, else `key@start`."""
    if tuple(shape) == tuple(array_shape):
        return key
    return f"{key}@{','.join(str(int(s)) for s in start)}"


def to_storable(a: np.ndarray) -> np.ndarray:
    """`a`, or a same-width unsigned-integer view for dtypes numpy cannot store (bfloat16)."""
    if a.dtype.kind in 'biufc':
        return a
    if a.dtype.hasobject:
        raise PieceError('an array of Python objects (pickle) cannot be stored or loaded: '
                         'checkpoints load with allow_pickle=False')
    return a.view(f'uint{8 * a.dtype.itemsize}')


def dtype_named(name: str) -> np.dtype:
    """The numpy dtype of a name, including ml_dtypes' (bfloat16 & co.) when installed."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:
        import ml_dtypes  # noqa: F401 - registers bfloat16 & co. with numpy.
        return np.dtype(getattr(ml_dtypes, name))
    except (ImportError, AttributeError, TypeError) as e:
        raise PieceError(f'cannot restore dtype {name}: {e}') from e


def from_storable(a: np.ndarray, dtype_name: str) -> np.ndarray:
    """Undoes to_storable: `a` viewed as the dtype named `dtype_name`."""
    return a if a.dtype.name == dtype_name else a.view(dtype_named(dtype_name))


class _Fetched:
    """Converts to an array only when np.savez writes it: one piece in host memory at a time."""

    def __init__(self, fetch: Callable[[], Any]):
        self._fetch = fetch

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return to_storable(np.asarray(self._fetch()))


def write_pieces(path: str, pieces: dict[str, Any]) -> None:
    """Writes {member name: array or zero-argument callable} to `path` atomically as an
    uncompressed np.savez archive (no pickle); callables are called one by one."""
    members = {name: _Fetched(value if callable(value) else (lambda v=value: v))
               for name, value in pieces.items()}
    atomic_write(path, lambda f: np.savez(f, allow_pickle=False, **members))


NONE, WRITTEN, FAILED = 0, 1, 2   # a process's shard file: none, written, failed


def write_and_exchange(path: str, pieces: dict[str, Any],
                       exchange: Callable[[tuple], list[tuple]], what: str) -> list[tuple]:
    """Writes this process's shard file (when it has pieces), then `exchange`s (a collective)
    its (status, bytes, sha256); returns every process's record. An OSError names the
    first process that failed (every process raises, so none goes on to commit)."""
    try:
        if pieces:
            write_pieces(path, pieces)
        record = (WRITTEN, os.path.getsize(path), sha256_of(path)) if pieces else (NONE, 0, '')
    except BaseException:
        exchange((FAILED, 0, ''))
        raise
    records = exchange(record)
    failed = [i for i, r in enumerate(records) if r[0] == FAILED]
    if failed:
        raise OSError(f'process {failed[0]} could not write its shard file of {what} (its '
                      f'log says why); nothing was committed')
    return records


def wait_for_commit(exchange: Callable[[tuple], list[tuple]], what: str) -> None:
    """Processes other than 0: waits until process 0 committed (OSError if it failed)."""
    if exchange((WRITTEN, 0, ''))[0][0] == FAILED:
        raise OSError(f'process 0 could not commit the checkpoint of {what} (its log says '
                      f'why)')


def _seek_data(f: Any, info: zipfile.ZipInfo) -> None:
    """Moves `f` (the archive's raw file) to the first byte of a stored member's data."""
    f.seek(info.header_offset + 26)
    name_len, extra_len = np.frombuffer(f.read(4), '<u2')
    f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))


def _member_array(path: str, name: str) -> np.ndarray:
    """Member `name` of an archive: memory-mapped when stored uncompressed, else loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(name + '.npy')
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, 'rb') as f:
                    _seek_data(f, info)
                    shape, dtype, fortran = _read_header(f, f'{path}: member {name!r}')
                    offset = f.tell()
                if not fortran and int(np.prod(shape)) > 0 and shape:
                    return np.memmap(path, dtype, 'r', offset, shape)
        with np.load(path, allow_pickle=False) as npz:
            return npz[name]
    except PieceError:
        raise
    except KeyError as e:
        raise PieceError(f'{path} has no piece {name!r}') from e
    except Exception as e:  # noqa: BLE001 - any failure to read the archive is corruption.
        raise PieceError(f'unreadable shard file {path}: {type(e).__name__}: {e}') from e


def _bounds(index: Any, shape: Sequence[int]) -> list[tuple[int, int]]:
    """[(start, stop)] per axis of a numpy-style index of slices (step 1) into `shape`."""
    index = index if isinstance(index, tuple) else (index,)
    index = index + (slice(None),) * (len(shape) - len(index))
    bounds = []
    for s, n in zip(index, shape):
        if not isinstance(s, slice):
            raise TypeError(f'PieceReader takes slices, got {s!r}')
        start, stop, step = s.indices(n)
        if step != 1:
            raise TypeError(f'PieceReader takes slices of step 1, got {s!r}')
        bounds.append((start, max(start, stop)))
    return bounds


class PieceReader:
    """One array of a checkpoint, read lazily: `reader[index]` reads that slice (slices of
    step 1) from the pieces that overlap it. `pieces`: [(file path, start, shape)]."""

    def __init__(self, key: str, dtype_name: str, shape: Sequence[int],
                 pieces: Sequence[tuple[str, Sequence[int], Sequence[int]]]):
        self.key, self.dtype_name = key, dtype_name
        self.dtype = dtype_named(dtype_name)
        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.nbytes = self.size * self.dtype.itemsize
        self.pieces = [(path, tuple(map(int, start)), tuple(map(int, size)))
                       for path, start, size in pieces]
        covered = 0
        for path, start, size in self.pieces:
            if len(start) != self.ndim or len(size) != self.ndim or any(
                    b < 0 or n < 0 or b + n > d for b, n, d in zip(start, size, self.shape)):
                raise PieceError(f'{key}: piece at {list(start)} of shape {list(size)} does '
                                 f'not lie inside the array of shape {list(self.shape)}')
            covered += int(np.prod(size, dtype=np.int64))
        if covered != self.size:
            raise PieceError(f'{key}: the pieces hold {covered} elements, the array '
                             f'{self.size} (pieces missing or overlapping)')

    def __repr__(self) -> str:
        return f'PieceReader({self.key!r}, {self.dtype_name}{list(self.shape)})'

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[()]
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        bounds = _bounds(index, self.shape)
        out = np.empty([b - a for a, b in bounds], self.dtype)
        if out.size == 0:
            return out
        for path, start, size in self.pieces:
            overlap = [(max(a, s), min(b, s + n)) for (a, b), s, n in zip(bounds, start, size)]
            if any(lo >= hi for lo, hi in overlap):
                continue
            member = self._piece(path, start, size)
            source = tuple(slice(lo - s, hi - s) for (lo, hi), s in zip(overlap, start))
            target = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(overlap, bounds))
            out[target] = from_storable(np.asarray(member[source]), self.dtype_name)
        return out

    def _piece(self, path: str, start: tuple, size: tuple) -> np.ndarray:
        name = piece_name(self.key, start, size, self.shape)
        member = _member_array(path, name)
        stored = to_storable(np.empty(0, self.dtype)).dtype
        if tuple(member.shape) != size or member.dtype != stored:
            raise PieceError(f'{path}: piece {name!r} is {member.dtype}{list(member.shape)}, '
                             f'the metadata says {self.dtype_name}{list(size)}')
        return member


def _read_header(f: Any, where: str) -> tuple[tuple, np.dtype, bool]:
    """(shape, dtype, fortran order) from an open .npy member positioned at its start."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise PieceError(f'{where} has npy format version {version}')
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise PieceError(f'{where} holds Python objects (pickle): refused, checkpoints load '
                         f'with allow_pickle=False')
    return tuple(shape), dtype, fortran


def member_headers(path: str) -> dict[str, tuple[tuple, np.dtype]]:
    """{member name (without .npy): (shape, dtype)} of a shard file, from the headers only
    (no array data is read); PieceError when unreadable or a member holds Python objects."""
    try:
        headers = {}
        with zipfile.ZipFile(path) as archive, open(path, 'rb') as raw:
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith('.npy') else info.filename
                where = f'{path}: member {name!r}'
                if info.compress_type == zipfile.ZIP_STORED:
                    _seek_data(raw, info)
                    shape, dtype, _ = _read_header(raw, where)
                else:
                    with archive.open(info) as f:
                        shape, dtype, _ = _read_header(f, where)
                headers[name] = (shape, dtype)
        return headers
    except PieceError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read the archive is corruption.
        raise PieceError(f'unreadable shard file {path}: {type(e).__name__}: {e}') from e


def _check_file(path: str, spec: dict, hash_it: bool) -> None:
    if not os.path.exists(path):
        raise PieceError(f'array file {path} is missing')
    size = os.path.getsize(path)
    if size != spec.get('bytes', size):
        raise PieceError(f"array file {path} has {size} bytes, the metadata says "
                         f"{spec['bytes']} (truncated?)")
    if hash_it and sha256_of(path) != spec['sha256']:
        raise PieceError(f'sha256 of {path} does not match the metadata (corrupt)')


def open_readers(directory: str, files: list[dict], leaves: dict,
                 hashed: Callable[[int], bool] | None = None) -> dict:
    """{key: PieceReader} of a checkpoint's `leaves` ({key: {dtype, shape, pieces: [[file,
    start, shape]]}}) in its shard `files` ([{file, sha256, bytes}]), after checking every
    file's size and sha256 (only of the files whose index `hashed` accepts, when given) and
    every piece's name, dtype and shape (headers only)."""
    paths = [os.path.join(directory, f['file']) for f in files]
    for i, (path, spec) in enumerate(zip(paths, files)):
        _check_file(path, spec, hashed is None or hashed(i))
    expected: list[dict] = [{} for _ in files]
    for key, spec in leaves.items():
        stored = to_storable(np.empty(0, dtype_named(spec['dtype']))).dtype
        for f, start, size in spec['pieces']:
            expected[f][piece_name(key, start, size, spec['shape'])] = (
                tuple(size), stored, key, spec['dtype'])
    for path, want in zip(paths, expected):
        headers = member_headers(path)
        if set(headers) != set(want):
            raise PieceError(f'array keys of {path} differ from the metadata: '
                             f'{sorted(set(headers) ^ set(want))[:5]}')
        for name, (shape, dtype) in headers.items():
            size, stored, key, dtype_name = want[name]
            if shape != size or dtype != stored:
                raise PieceError(f'array {name!r} in {path} is {dtype}{list(shape)}, the '
                                 f'metadata says {dtype_name}{list(size)}')
    return {key: PieceReader(key, spec['dtype'], spec['shape'], [
        (paths[f], start, size) for f, start, size in spec['pieces']])
        for key, spec in leaves.items()}


__all__ = ['FAILED', 'NONE', 'PieceError', 'PieceReader', 'WRITTEN', 'dtype_named', 'from_storable',
           'member_headers', 'open_readers', 'piece_name', 'to_storable', 'wait_for_commit',
           'write_and_exchange', 'write_pieces']
