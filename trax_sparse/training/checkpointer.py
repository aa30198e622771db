"""The Loop's checkpointer: where checkpoints go, restore with safety, save, space checks.

Safety rules (as orbax / T5X): a checkpoint that fails to verify is never overwritten or
deleted; it is moved into `checkpoints/corrupt/` (a name that exists there gets a `.N`
suffix). When the directory holds checkpoints and none of them is usable, `restore()`
refuses to start (CheckpointError, nothing moved) unless `restart=True`: then the bad
checkpoints are moved aside and training starts from step 0. A newer corrupt checkpoint
next to a usable older one is moved aside and the older one is used.

Example:
    >>> import numpy as np, tempfile
    >>> c = Checkpointer(tempfile.mkdtemp(), keep=2)
    >>> c.prepare()
    >>> c.restore() is None
    True
    >>> _ = c.save(1, (np.ones(2, np.float32),), (), [], '', {})
    >>> c.restore().step
    1
"""
import logging
import os
import shutil
import warnings
from typing import Any, Callable, Sequence

from trax_sparse import fastmath, io_utils
from trax_sparse.training import checkpoint as ckpt
from trax_sparse.training.train_step import TrainState, TreeMismatchError, check_same_tree

log = logging.getLogger('trax_sparse.training')
CORRUPT_DIR = 'corrupt'
SPACE_MARGIN = 1.25  # free space needed: this times the arrays' bytes, plus 1 MiB


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); the message names the file."""


OutputDirError = io_utils.DirectoryError


class OutputDir(str):
    """An output directory path that prepare_output_dir has checked (not checked again)."""


def prepare_output_dir(path: str) -> OutputDir:
    """Creates `path` if needed and checks it is writable; returns its absolute path.

    Raises OutputDirError. A path it returned is returned as is (checked once per run).
    """
    if isinstance(path, OutputDir):
        return path
    return OutputDir(io_utils.check_writable_dir(path, 'output_dir'))


def _unused_name(path: str) -> str:
    candidate, n = path, 0
    while os.path.exists(candidate):
        n += 1
        candidate = f'{path}.{n}'
    return candidate


def move_aside(directory: str, step: int) -> list[str]:
    """Moves the files of checkpoint `step` into `directory/corrupt/`; returns the new paths."""
    target_dir = os.path.join(directory, CORRUPT_DIR)
    os.makedirs(target_dir, exist_ok=True)
    moved = []
    for path in ckpt.step_files(directory, step):   # the JSON first: no longer committed
        target = _unused_name(os.path.join(target_dir, os.path.basename(path)))
        os.replace(path, target)
        moved.append(target)
    io_utils.fsync_dir(directory)
    return moved


def tree_bytes(*trees: Any) -> int:
    """Bytes of all array leaves of the trees (the size of their checkpoint arrays)."""
    return sum(int(getattr(x, 'nbytes', 0)) for t in trees for x in fastmath.tree_leaves(t))


def restore_train_state(restored: ckpt.Checkpoint, template: TrainState,
                        optimizer_name: str) -> TrainState:
    """The checkpoint's trees, checked against the model's `template`; CheckpointError
    (naming the file and the first leaf that differs) when they do not fit."""
    source = f'checkpoint {restored.path}'
    leaves, treedef = fastmath.backend().tree_flatten(template.opt_state)
    try:
        check_same_tree('weights', restored.weights, template.weights, source)
        check_same_tree('state', restored.state, template.state, source)
        check_same_tree('optimizer state', restored.opt_state_leaves, leaves, source)
    except TreeMismatchError as e:
        raise ckpt.CheckpointError(str(e)) from None
    saved_treedef = restored.metadata['trees']['opt_state'].get('treedef')
    if saved_treedef and saved_treedef != str(treedef):
        raise ckpt.CheckpointError(f'{source}: the optimizer state has another structure '
                                   f'than {optimizer_name} makes (optimizer changed?)')
    opt_state = fastmath.backend().tree_unflatten(treedef, restored.opt_state_leaves)
    return TrainState(restored.weights, restored.state, opt_state)


class Checkpointer:
    """Saves and restores the checkpoints of one directory (see the module docstring).

    `write=False` (processes other than 0 in a multi-host run): writes its own shard files
    of a checkpoint but never commits, deletes or moves a checkpoint.
    """

    def __init__(self, directory: str, keep: int = 3, restart: bool = False,
                 write: bool = True):
        if keep < 1:
            raise ValueError(f'Loop: keep_checkpoints must be >= 1, got {keep}')
        self.directory, self.keep = directory, int(keep)
        self.restart, self.write = bool(restart), bool(write)
        self.restarted = False  # set when restore() moved every checkpoint aside

    def prepare(self) -> None:
        """Creates the directory, checks it is writable, removes temp files of killed writes."""
        if self.write:
            io_utils.check_writable_dir(self.directory, 'checkpoint dir')
            ckpt.remove_temp_files(self.directory)

    def check_space(self, n_bytes: int) -> None:
        """Raises DirectoryError unless a checkpoint of `n_bytes` array bytes fits."""
        if self.write:
            need = int(n_bytes * SPACE_MARGIN) + 2**20
            io_utils.check_writable_dir(self.directory, 'checkpoint dir', need_bytes=need)

    def restore(self, run_files: Sequence[str] = (),
                exchange: Callable[[tuple], list[tuple]] | None = None, process: int = 0
                ) -> ckpt.Checkpoint | None:
        """The newest usable checkpoint, None when there is none (or after a restart). Its
        files are verified (checksums, headers); its arrays are PieceReaders, read when placed.

        On a restart, `run_files` of the output dir (metrics.jsonl, TensorBoard folders)
        are moved into output_dir/previous-run/ so the new run starts clean. Multi-host
        (`exchange`: Placement.exchange, a collective; `process`: this one's index): the
        processes must find the same checkpoints; each hashes its share of the shard files
        and they agree on each verdict, so all restore the same step.
        """
        found = ckpt.list_checkpoints(self.directory)
        mine = None
        if exchange is not None:
            n_processes = check_same_checkpoints(found, exchange)
            mine = lambda index: index % n_processes == process  # noqa: E731
        failures = []
        for step, json_path in reversed(found):
            try:
                restored, reason = ckpt.read_checkpoint(json_path, lazy=True, hashed=mine), ''
            except ckpt.CheckpointError as e:
                restored, reason = None, str(e)
            if exchange is not None:
                verdicts = exchange((int(bool(reason)), 0, ''))
                bad = [i for i, (failed, _, _) in enumerate(verdicts) if failed]
                if bad and not reason:
                    restored, reason = None, (f'process {bad[0]} found it corrupt (its log '
                                              f'says why)')
            if restored is None:
                failures.append((step, json_path, reason))
                continue
            for bad_step, bad_path, bad_reason in failures:
                self._set_aside(bad_step, bad_path, bad_reason, 'using an older one')
            return restored
        return self._none_usable(failures, run_files)

    def _none_usable(self, failures: list, run_files: Sequence[str]) -> None:
        """No usable checkpoint: refuse to start (unless restart), or move them aside."""
        if failures and not self.restart:
            lines = '; '.join(f'{os.path.basename(p)}: {r}' for _, p, r in failures)
            raise ckpt.CheckpointError(
                f'every checkpoint in {self.directory} is unusable ({lines}); nothing was '
                f'changed. Pass --restart (Loop(restart=True)) to move them into '
                f'{os.path.join(self.directory, CORRUPT_DIR)} and train from step 0, or '
                f'restore a good checkpoint there')
        for bad_step, bad_path, reason in failures:
            self._set_aside(bad_step, bad_path, reason, 'restarting from step 0 (--restart)')
        self.restarted = bool(failures)
        if self.restarted and self.write:
            moved = archive_previous_run(os.path.dirname(self.directory), run_files)
            if moved:
                log.warning('restart: the metrics of the previous run are in %s', moved)
        return None

    def _set_aside(self, step: int, json_path: str, reason: str, action: str) -> None:
        moved = move_aside(self.directory, step) if self.write else []
        where = f'moved to {os.path.dirname(moved[0])}' if moved else 'left in place'
        message = f'checkpoint {json_path} (step {step}) is unusable: {reason}; {where}; {action}'
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def save(self, step: int, weights: Any, state: Any, opt_leaves: Sequence, opt_treedef: str,
             metadata: dict, **sharded: Any) -> str | None:
        """Writes the checkpoint of `step`; an OSError becomes a CheckpointWriteError.

        `sharded`: pieces, process and exchange of checkpoint.save_checkpoint (every process
        of a multi-host run calls save; each writes its pieces, process 0 commits).
        """
        try:
            return ckpt.save_checkpoint(self.directory, step, weights, state, opt_leaves,
                                        opt_treedef, metadata, keep=self.keep, **sharded)
        except OSError as e:
            where = getattr(e, 'filename', None) or self.directory
            raise CheckpointWriteError(
                f'could not write the checkpoint of step {step} to {where}: '
                f'{e.strerror or e} (the previous checkpoints are intact; free space or fix '
                f'the permissions, then rerun to resume)') from e


def archive_previous_run(output_dir: str, names: Sequence[str]) -> str | None:
    """Moves `names` (metrics.jsonl, train/, eval/, ...) of output_dir into a new
    `output_dir/previous-run-N/`; returns it (None when there was nothing to move)."""
    present = [n for n in names if os.path.exists(os.path.join(output_dir, n))]
    if not present:
        return None
    target = _unused_name(os.path.join(output_dir, 'previous-run'))
    os.makedirs(target)
    for name in present:
        shutil.move(os.path.join(output_dir, name), os.path.join(target, name))
    return target


def check_same_checkpoints(found: list[tuple[int, str]],
                           exchange: Callable[[tuple], list[tuple]]) -> int:
    """Multi-host: raises CheckpointError unless every process found as many checkpoints,
    the newest of the same step (they must share one directory); returns the number of
    processes (`exchange`: Placement.exchange, a collective)."""
    newest = found[-1][0] if found else -1
    seen = exchange((len(found), newest, ''))
    if len(set((n, s) for n, s, _ in seen)) > 1:
        listed = ', '.join(f'process {i}: ' + (f'{n}, the newest step {s}' if n else 'none')
                           for i, (n, s, _) in enumerate(seen))
        raise ckpt.CheckpointError(
            f'the processes found different checkpoints ({listed}): give every process the '
            f'same output_dir, on a filesystem they all see')
    return len(seen)


def choose_seed(restored: ckpt.Checkpoint | None, random_seed: int | None) -> int:
    """The run's seed: the checkpoint's when resuming (a different random_seed is noted),
    else random_seed, else a random one."""
    if restored is not None:
        seed = int(restored.metadata['rng']['seed'])
        if random_seed is not None and random_seed != seed:
            log.warning('resuming with the checkpoint seed %d, not random_seed=%s', seed,
                        random_seed)
        return seed
    return int(random_seed) if random_seed is not None else \
        int.from_bytes(os.urandom(4), 'little')


def operative_config(loaded: ckpt.Checkpoint, directory: str) -> str:
    """The gin config a checkpoint was trained with: the one stored in it, else the output
    dir's config.gin; '' when neither holds one."""
    text = loaded.metadata.get('gin_config')
    config_file = os.path.join(directory, 'config.gin')
    if not text and os.path.exists(config_file):
        with open(config_file, encoding='utf-8') as f:
            text = f.read()
    return text or ''


__all__ = ['CORRUPT_DIR', 'CheckpointWriteError', 'Checkpointer', 'OutputDir', 'OutputDirError',
           'archive_previous_run', 'check_same_checkpoints', 'choose_seed', 'move_aside',
           'operative_config', 'prepare_output_dir', 'restore_train_state', 'tree_bytes']
