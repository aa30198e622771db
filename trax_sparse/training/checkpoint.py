"""Checkpoints: pickle-free `.npz` arrays plus JSON metadata, written atomically.

Format version 2. A checkpoint of step N in a checkpoint directory is two files:

- `ckpt-0000000N.npz`: an `np.savez` archive (no pickle; loaded with allow_pickle=False)
  holding every leaf of the weights, the model state and the optimizer state, each under
  a stable key: its path in the tree, e.g. 'weights/3/0', 'state/1', 'opt_state/000012'
  (optimizer leaves in jax.tree_util order). Dtypes numpy cannot store natively
  (bfloat16, ...) are stored as same-width unsigned-integer views.
- `ckpt-0000000N.json`: the metadata, written last (it is the commit record: an npz
  without its JSON is not a checkpoint):
  `{"format": "trax_sparse.checkpoint", "format_version": 2, "step": N,
    "arrays": {"file": "ckpt-0000000N.npz", "sha256": "...", "bytes": 1234},
    "trees": {"weights": S, "state": S, "opt_state": {"treedef": "...", "n_leaves": k}},
    "leaves": {key: {"dtype": "float32", "shape": [d, ...]}, ...},
    ...extra entries given by the caller: "rng", "data_position", "gin_config", ...,
    "metadata_sha256": "..."}`
  where a structure S is JSON: a list per tuple, an object per dict, "*" per array
  and null per None. "metadata_sha256" is the sha256 of every other entry (JSON with sorted
  keys, no spaces), so an edit of the stored gin config makes the checkpoint corrupt.
  Version 1 files (no metadata checksum) still load.

Each file is written to a temporary file in the same directory, fsync'd and moved into
place with os.replace (io_utils.atomic_write: the umask decides the file mode). Loading
verifies both checksums and that every leaf of the metadata is in the archive with its
dtype and shape; a checkpoint that fails is reported (a warning naming the file) and the
previous one is used.

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
from typing import Any, Sequence

import numpy as np

from trax_sparse.io_utils import TEMP_PREFIX, atomic_write, atomic_write_text, sha256_of

FORMAT = 'trax_sparse.checkpoint'
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FILE_PREFIX = 'ckpt-'
METADATA_SHA256 = 'metadata_sha256'
_NAME = re.compile(r'^ckpt-(\d+)\.(npz|json)$')
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


def _to_storable(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in 'biufc':
        return a
    return a.view(f'uint{8 * a.dtype.itemsize}')  # e.g. bfloat16 -> uint16 bits.


def _from_storable(a: np.ndarray, dtype_name: str) -> np.ndarray:
    if a.dtype.name == dtype_name:
        return a
    try:
        import ml_dtypes  # noqa: F401 - registers bfloat16 & co. with numpy.
        dtype = np.dtype(getattr(ml_dtypes, dtype_name, dtype_name))
    except (ImportError, TypeError) as e:
        raise CheckpointError(f'cannot restore dtype {dtype_name}: {e}') from e
    return a.view(dtype)


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
def checkpoint_paths(directory: str, step: int) -> tuple[str, str]:
    """(npz path, json path) of the checkpoint of `step` in `directory`."""
    base = os.path.join(directory, f'{FILE_PREFIX}{step:08d}')
    return base + '.npz', base + '.json'


def save_checkpoint(directory: str, step: int, weights: Any, state: Any,
                    opt_state_leaves: Sequence = (), opt_treedef: str = '',
                    metadata: dict | None = None, keep: int | None = None) -> str:
    """Writes the checkpoint of `step` (host arrays) atomically; returns the JSON path.

    `metadata` entries (JSON-serializable) are stored in the JSON file; `keep` > 0
    deletes all but the newest `keep` checkpoints up to this step.
    """
    os.makedirs(directory, exist_ok=True)
    items = (flatten_with_keys(weights, 'weights') + flatten_with_keys(state, 'state')
             + [(f'opt_state/{i:06d}', leaf) for i, leaf in enumerate(opt_state_leaves)])
    arrays, leaves = {}, {}
    for key, leaf in items:
        a = np.asarray(leaf)
        arrays[key] = _to_storable(a)
        leaves[key] = {'dtype': a.dtype.name, 'shape': list(a.shape)}
    npz_path, json_path = checkpoint_paths(directory, step)
    atomic_write(npz_path, lambda f: np.savez(f, allow_pickle=False, **arrays))
    record = dict(metadata or {})
    record.update({
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'step': int(step),
        'arrays': {'file': os.path.basename(npz_path), 'sha256': sha256_of(npz_path),
                   'bytes': os.path.getsize(npz_path)},
        'trees': {'weights': tree_to_json(weights), 'state': tree_to_json(state),
                  'opt_state': {'treedef': opt_treedef, 'n_leaves': len(opt_state_leaves)}},
        'leaves': leaves,
    })
    record = json.loads(json.dumps(record, default=_json_default))  # as a reader will see it
    record[METADATA_SHA256] = metadata_digest(record)
    atomic_write_text(json_path, json.dumps(record, indent=1))
    if keep:
        prune_checkpoints(directory, keep, up_to_step=step)
    return json_path


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """[(step, json path)] of the committed checkpoints in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match and match.group(2) == 'json':
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
        npz_path, json_path = checkpoint_paths(directory, step)
        for path in (json_path, npz_path):
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
def read_checkpoint(json_path: str) -> Checkpoint:
    """Loads and verifies one checkpoint; raises CheckpointError saying what is wrong."""
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
    try:
        npz_path = os.path.join(os.path.dirname(json_path), meta['arrays']['file'])
        expected_sha, leaves, trees = meta['arrays']['sha256'], meta['leaves'], meta['trees']
        step = int(meta['step'])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f'metadata lacks {e}') from e
    if not os.path.exists(npz_path):
        raise CheckpointError(f'array file {npz_path} is missing')
    size = os.path.getsize(npz_path)
    if size != meta['arrays'].get('bytes', size):
        raise CheckpointError(f"array file {npz_path} has {size} bytes, the metadata says "
                              f"{meta['arrays']['bytes']} (truncated?)")
    if sha256_of(npz_path) != expected_sha:
        raise CheckpointError(f'sha256 of {npz_path} does not match the metadata (corrupt)')
    arrays = {}
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            if set(npz.files) != set(leaves):
                raise CheckpointError(f'array keys differ from the metadata: '
                                      f'{sorted(set(npz.files) ^ set(leaves))[:5]}')
            for key, spec in leaves.items():
                a = _from_storable(npz[key], spec['dtype'])
                if a.dtype.name != spec['dtype'] or list(a.shape) != spec['shape']:
                    raise CheckpointError(f'array {key!r} is {a.dtype.name}{list(a.shape)}, the '
                                          f"metadata says {spec['dtype']}{spec['shape']}")
                arrays[key] = a
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read the archive is corruption.
        raise CheckpointError(f'unreadable array file {npz_path}: {type(e).__name__}: {e}') from e
    n_opt = int(trees.get('opt_state', {}).get('n_leaves', 0))
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
           'list_checkpoints', 'load_latest', 'load_weights', 'prune_checkpoints',
           'read_checkpoint', 'remove_temp_files', 'save_checkpoint', 'tree_from_json',
           'tree_to_json']
