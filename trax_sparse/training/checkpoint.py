"""Checkpoints: pickle-free `.npz` arrays plus JSON metadata, written atomically.

Format version 3. A checkpoint of step N in a checkpoint directory is its shard files and,
written last, its metadata:

- `ckpt-0000000N.npz` (process 0) and `ckpt-0000000N.pK.npz` (process K > 0, five digits):
  uncompressed `np.savez` archives (no pickle; loaded with allow_pickle=False). Each leaf
  of the weights, the model state and the optimizer state has a stable key, its path in
  the tree: 'weights/3/0', 'state/1', 'opt_state/000012' (optimizer leaves in
  jax.tree_util order). A leaf is stored as pieces, rectangular slices that tile it, each
  written once, by the process of the first device holding that slice (the others hold
  copies): so no process gathers an array split over devices. A whole-array piece is
  stored under the key, a smaller one under `key@start` ('weights/3/0@0,512'); a process
  with no piece writes no file. Dtypes numpy cannot store natively (bfloat16, ...) are
  stored as same-width unsigned-integer views.
- `ckpt-0000000N.json`: the commit record, written by process 0 after every process wrote
  its shard file (a shard file without its JSON is not a checkpoint):
  `{"format": "trax_sparse.checkpoint", "format_version": 3, "step": N,
    "arrays": [{"file": "ckpt-0000000N.npz", "process": 0, "sha256": "...", "bytes": 1234},
               ...one entry per shard file],
    "trees": {"weights": S, "state": S, "opt_state": {"treedef": "...", "n_leaves": k}},
    "leaves": {key: {"dtype": "float32", "shape": [d, ...],
                     "pieces": [[file index in "arrays", [start, ...], [size, ...]], ...]}},
    ...extra entries given by the caller: "rng", "data_position", "gin_config", "mesh", ...,
    "metadata_sha256": "..."}`
  where a structure S is JSON: a list per tuple, an object per dict, "*" per array
  and null per None. "metadata_sha256" is the sha256 of every other entry (JSON with sorted
  keys, no spaces), so an edit of the stored gin config makes the checkpoint corrupt.
  Versions 1 and 2 still load: one `ckpt-0000000N.npz` of whole arrays, "arrays" a single
  {"file", "sha256", "bytes"} object, no "pieces" (version 1: no metadata checksum).

Every file is written to a temporary file in the same directory, fsync'd and moved into
place with os.replace (io_utils.atomic_write: the umask decides the file mode). Several
processes write into one directory (a filesystem they share); process 0 checks every
shard file is there before it commits. Loading verifies the metadata checksum, every shard
file's size and sha256, and every piece's dtype and shape; a checkpoint that fails is
reported (a warning naming the file) and the previous one is used. `read_checkpoint`
assembles whole NumPy arrays (no JAX needed), or gives lazy readers (`lazy=True`) from
which each device of another mesh reads only its slice (checkpoint_shards.PieceReader).

Example:
    >>> import numpy as np, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = save_checkpoint(d, 5, (np.ones(2, np.float32), ()), ())
    >>> load_weights(d)
    ((array([1., 1.], dtype=float32), ()), ())
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse.io_utils import TEMP_PREFIX, atomic_write, atomic_write_text, sha256_of
from trax_sparse.training import checkpoint_shards as shards

FORMAT = 'trax_sparse.checkpoint'
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FILE_PREFIX = 'ckpt-'
METADATA_SHA256 = 'metadata_sha256'
_NAME = re.compile(r'^ckpt-(\d+)(\.json|\.npz|\.p\d{5}\.npz)$')   # JSON, shard files
log = logging.getLogger('trax_sparse.training')


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: NumPy trees, optimizer leaves and the metadata dict."""
    step: int
    weights: Any
    state: Any
    opt_state_leaves: list
    metadata: dict
    path: str


# ---- trees <-> flat arrays --------------------------------------------------------------------
def tree_to_json(tree: Any) -> Any:
    """The structure of a tree of tuples/lists/dicts as JSON (see the module docstring)."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {str(k): tree_to_json(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return [tree_to_json(c) for c in tree]
    return '*'


def flatten_with_keys(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    """[(path key, leaf)] in depth-first order, e.g. [('weights/0/0', w), ...]."""
    if tree is None:
        return []
    if isinstance(tree, dict):
        items = []
        for k, v in tree.items():
            if '/' in str(k):
                raise ValueError(f"checkpoint: dict key {k!r} under {prefix!r} contains '/'")
            items += flatten_with_keys(v, f'{prefix}/{k}')
        return items
    if isinstance(tree, (tuple, list)):
        return [kv for i, c in enumerate(tree) for kv in flatten_with_keys(c, f'{prefix}/{i}')]
    return [(prefix, tree)]


def tree_from_json(structure: Any, arrays: dict, prefix: str) -> Any:
    """Rebuilds a tree (tuples for lists) from its JSON structure and keyed arrays."""
    if structure is None:
        return None
    if structure == '*':
        if prefix not in arrays:
            raise CheckpointError(f'array {prefix!r} of the metadata is missing')
        return arrays[prefix]
    if isinstance(structure, dict):
        return {k: tree_from_json(v, arrays, f'{prefix}/{k}') for k, v in structure.items()}
    if isinstance(structure, list):
        return tuple(tree_from_json(c, arrays, f'{prefix}/{i}') for i, c in enumerate(structure))
    raise CheckpointError(f'bad tree structure entry {structure!r} at {prefix!r}')


# ---- metadata ---------------------------------------------------------------------------
def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f'{type(x).__name__} is not JSON serializable')


def metadata_digest(meta: dict) -> str:
    """sha256 of every metadata entry but the digest itself (sorted keys, no spaces)."""
    body = {k: v for k, v in meta.items() if k != METADATA_SHA256}
    text = json.dumps(body, sort_keys=True, separators=(',', ':'), default=_json_default)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


# ---- saving -------------------------------------------------------------------------------------
def shard_file_name(step: int, process: int) -> str:
    """The shard file of `process`: ckpt-0000000N.npz for process 0, else ckpt-0000000N.pK.npz."""
    suffix = '' if process == 0 else f'.p{process:05d}'
    return f'{FILE_PREFIX}{step:08d}{suffix}.npz'


def checkpoint_paths(directory: str, step: int) -> tuple[str, str]:
    """(process 0's shard file, json path) of the checkpoint of `step` in `directory`."""
    base = os.path.join(directory, f'{FILE_PREFIX}{step:08d}')
    return base + '.npz', base + '.json'


def step_files(directory: str, step: int) -> list[str]:
    """Every file of the checkpoint of `step` in `directory`: the JSON first, then shards."""
    names = [n for n in os.listdir(directory)
             if (match := _NAME.match(n)) and int(match.group(1)) == step]
    names.sort(key=lambda n: (not n.endswith('.json'), n))
    return [os.path.join(directory, n) for n in names]


def host_pieces(leaf: Any) -> list[tuple]:
    """The pieces of a host array: the whole array, written by process 0."""
    a = np.asarray(leaf)
    return [((0,) * a.ndim, a.shape, 0, a)]


def _single_process(record: tuple) -> list[tuple]:
    return [record]


def save_checkpoint(directory: str, step: int, weights: Any, state: Any,
                    opt_state_leaves: Sequence = (), opt_treedef: str = '',
                    metadata: dict | None = None, keep: int | None = None,
                    pieces: Callable[[Any], list] = host_pieces, process: int = 0,
                    exchange: Callable[[tuple], list[tuple]] = _single_process,
                    on_commit: Callable[[str], None] | None = None) -> str | None:
    """Writes the checkpoint of `step` atomically; returns the JSON path (None on processes
    other than 0).

    `metadata` entries (JSON-serializable) are stored in the JSON file; `keep` > 0 deletes
    all but the newest `keep` checkpoints up to this step. Several processes (each calls
    this with the same global arrays): `pieces(leaf)` gives [(start, shape, writing process,
    this process's copy or None)] of each leaf; every process writes its pieces into its
    shard file; `exchange(record)` (a collective) gives every process's (status, bytes,
    sha256) of its file; then process 0 writes the JSON (the commit record) and calls
    `on_commit(json_path)` at once, before the final exchange that tells the others.
    """
    os.makedirs(directory, exist_ok=True)
    items = (flatten_with_keys(weights, 'weights') + flatten_with_keys(state, 'state')
             + [(f'opt_state/{i:06d}', leaf) for i, leaf in enumerate(opt_state_leaves)])
    leaves, mine = {}, {}
    for key, leaf in items:
        parts = pieces(leaf)
        shape = tuple(int(n) for n in np.shape(leaf))
        leaves[key] = {'dtype': np.dtype(leaf.dtype).name, 'shape': list(shape), 'pieces': []}
        for start, size, owner, local in parts:
            leaves[key]['pieces'].append([int(owner), [int(b) for b in start],
                                          [int(n) for n in size]])
            if owner == process:
                mine[shards.piece_name(key, start, size, shape)] = local
    path = os.path.join(directory, shard_file_name(step, process))
    records = shards.write_and_exchange(path, mine, exchange, f'step {step}')
    if process != 0:
        return shards.wait_for_commit(exchange, f'step {step}')
    try:
        json_path = _commit(directory, step, records, leaves, weights, state,
                            len(opt_state_leaves), opt_treedef, metadata)
    except BaseException:
        exchange((shards.FAILED, 0, ''))
        raise
    if on_commit is not None:
        on_commit(json_path)
    exchange((shards.WRITTEN, 0, ''))
    if keep:
        prune_checkpoints(directory, keep, up_to_step=step)
    return json_path


def _commit(directory: str, step: int, records: list[tuple], leaves: dict, weights: Any,
            state: Any, n_opt: int, opt_treedef: str, metadata: dict | None) -> str:
    """Checks every process's shard file is in `directory`, then writes the JSON."""
    files, index = [], {}
    for process, (status, n_bytes, sha) in enumerate(records):
        if status != shards.WRITTEN:
            continue
        name = shard_file_name(step, process)
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != n_bytes:
            raise OSError(f'process {process} wrote {name} ({n_bytes} bytes), but {path} '
                          f'is missing or has another size: every process must write to the '
                          f'same checkpoint directory (give all processes the same '
                          f'output_dir, on a filesystem they share)')
        index[process] = len(files)
        files.append({'file': name, 'process': process, 'sha256': sha, 'bytes': n_bytes})
    for spec in leaves.values():
        spec['pieces'] = [[index[owner], start, size] for owner, start, size in spec['pieces']]
    record = dict(metadata or {})
    record.update({
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'step': int(step),
        'arrays': files,
        'trees': {'weights': tree_to_json(weights), 'state': tree_to_json(state),
                  'opt_state': {'treedef': opt_treedef, 'n_leaves': n_opt}},
        'leaves': leaves,
    })
    record = json.loads(json.dumps(record, default=_json_default))  # as a reader will see it
    record[METADATA_SHA256] = metadata_digest(record)
    json_path = checkpoint_paths(directory, step)[1]
    atomic_write_text(json_path, json.dumps(record, indent=1))
    return json_path


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """[(step, json path)] of the committed checkpoints in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match and match.group(2) == '.json':
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def prune_checkpoints(directory: str, keep: int, up_to_step: int) -> None:
    """Deletes the files of all but the newest `keep` steps <= up_to_step (JSON first)."""
    steps = set()
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match and int(match.group(1)) <= up_to_step:
            steps.add(int(match.group(1)))
    for step in sorted(steps)[:-keep]:
        for path in step_files(directory, step):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def remove_temp_files(directory: str) -> None:
    """Removes temp files left by a write that was killed (names start with TEMP_PREFIX)."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(TEMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))


# ---- loading ------------------------------------------------------------------------------------
def _read_metadata(json_path: str) -> dict:
    try:
        with open(json_path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'unreadable metadata: {e}') from e
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise CheckpointError(f'not a {FORMAT} metadata file')
    version = meta.get('format_version')
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f'format version {version!r} is not one of {READABLE_VERSIONS}')
    if version >= 2 and meta.get(METADATA_SHA256) != metadata_digest(meta):
        raise CheckpointError(f'{METADATA_SHA256} does not match the metadata (corrupt: '
                              f'the stored config or another entry was changed)')
    return meta


def _layout(meta: dict) -> tuple[list[dict], dict]:
    """(shard files, leaves with their pieces) of any format version: versions 1 and 2 are
    one file holding every array whole."""
    files, leaves = meta['arrays'], meta['leaves']
    if meta['format_version'] >= 3:
        return list(files), leaves
    whole = {key: dict(spec, pieces=[[0, [0] * len(spec['shape']), spec['shape']]])
             for key, spec in leaves.items()}
    return [dict(files)], whole


def read_checkpoint(json_path: str, lazy: bool = False,
                    hashed: Callable[[int], bool] | None = None) -> Checkpoint:
    """Loads and verifies one checkpoint; raises CheckpointError saying what is wrong.

    Every file's size and sha256 (`hashed`: only of the shard files whose index it accepts;
    the processes of a multi-host restore share the work) and every piece's dtype and shape
    are checked first. The trees hold NumPy arrays (assembled from their pieces), or with
    `lazy` PieceReaders that read a slice when indexed (`reader[index]`): restoring onto a
    mesh reads each device's slice only.
    """
    meta = _read_metadata(json_path)
    try:
        files, leaves = _layout(meta)
        trees, step = meta['trees'], int(meta['step'])
        n_opt = int(trees.get('opt_state', {}).get('n_leaves', 0))
        readers = shards.open_readers(os.path.dirname(json_path), files, leaves, hashed)
        arrays = readers if lazy else {key: r[()] for key, r in readers.items()}
    except shards.PieceError as e:
        raise CheckpointError(str(e)) from e
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f'metadata lacks or garbles {type(e).__name__}: {e}') from e
    return Checkpoint(
        step=step,
        weights=tree_from_json(trees['weights'], arrays, 'weights'),
        state=tree_from_json(trees['state'], arrays, 'state'),
        opt_state_leaves=[arrays[f'opt_state/{i:06d}'] for i in range(n_opt)],
        metadata=meta, path=json_path)


def find_checkpoint_dir(directory: str) -> str:
    """`directory/checkpoints` when it exists (a training output dir), else `directory`."""
    sub = os.path.join(directory, 'checkpoints')
    return sub if os.path.isdir(sub) else directory


def load_latest(directory: str, rejected: list | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies; warns about (and skips) corrupt newer ones.

    rejected: a list that gets (json path, reason) of each checkpoint skipped.
    """
    for step, json_path in reversed(list_checkpoints(directory)):
        try:
            return read_checkpoint(json_path)
        except CheckpointError as e:
            if rejected is not None:
                rejected.append((json_path, str(e)))
            message = (f'checkpoint {json_path} (step {step}) is unusable: {e}; '
                       f'falling back to the previous checkpoint')
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return None


def load_weights(checkpoint_dir: str) -> tuple[Any, Any]:
    """(weights, state) as NumPy trees from the newest valid checkpoint (no JAX needed).

    `checkpoint_dir` is a training output dir, its `checkpoints/` dir, or a `.json` file.
    """
    if checkpoint_dir.endswith('.json') and os.path.isfile(checkpoint_dir):
        ckpt = read_checkpoint(checkpoint_dir)
    else:
        ckpt = load_latest(find_checkpoint_dir(checkpoint_dir))
    if ckpt is None:
        raise CheckpointError(f'no usable checkpoint in {checkpoint_dir}')
    return ckpt.weights, ckpt.state


__all__ = ['Checkpoint', 'CheckpointError', 'FORMAT', 'FORMAT_VERSION', 'METADATA_SHA256',
           'READABLE_VERSIONS', 'TEMP_PREFIX', 'atomic_write', 'metadata_digest',
           'atomic_write_text', 'checkpoint_paths', 'find_checkpoint_dir', 'flatten_with_keys',
           'host_pieces', 'list_checkpoints', 'load_latest', 'load_weights',
           'prune_checkpoints', 'read_checkpoint', 'remove_temp_files', 'save_checkpoint',
           'shard_file_name', 'step_files', 'tree_from_json', 'tree_to_json']
