"""Checkpoints of sharded state (issue 21): every process writes its own pieces, process 0
commits; a checkpoint restores onto another mesh or number of processes; kill -9 mid-save
leaves the previous checkpoint usable. The acceptance run is 3 subprocesses (8 CPU devices:
1 process x 8, then 2 processes x 4 over 127.0.0.1), sharded_child.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import ml_dtypes
import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse.training import checkpoint as ckpt
from trax_sparse.training import checkpoint_shards as shards
from trax_sparse.training import checkpointer
from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---- the format, with two "processes" as threads ------------------------------------------------
class Exchange:
    """checkpoint.save_checkpoint's collective for threads that play processes."""

    def __init__(self, n):
        self.records, self.barrier = [None] * n, threading.Barrier(n, timeout=10)

    def __call__(self, process):
        def exchange(record):
            self.records[process] = record
            self.barrier.wait()
            gathered = list(self.records)
            self.barrier.wait()
            return gathered
        return exchange


def _as_two_processes(run) -> None:
    """Runs run(0) and run(1) at once, each in its own thread (the two processes)."""
    threads = [threading.Thread(target=run, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _split_rows(process_count):
    """pieces(): rows split evenly over the processes (a weight split over 'data')."""
    def pieces(leaf):
        a = np.asarray(leaf)
        if a.ndim == 0 or a.shape[0] % process_count:
            return [((0,) * a.ndim, a.shape, 0, a)]
        rows = a.shape[0] // process_count
        return [((p * rows,) + (0,) * (a.ndim - 1), (rows,) + a.shape[1:], p,
                 a[p * rows:(p + 1) * rows]) for p in range(process_count)]
    return pieces


def _trees(seed):
    weights = (np.arange(24, dtype=np.float32).reshape(6, 4) * seed, np.full(3, seed, np.int32))
    opt = [(np.ones((4, 2)) * seed).astype(ml_dtypes.bfloat16)]   # stored as uint16 pieces
    return weights, (np.array(seed, np.float32),), opt


def _save_two_processes(directory, step, seed, keep=None, directory_1=None):
    weights, state, opt = _trees(seed)
    exchange, results = Exchange(2), [None, None]

    def run(process):
        try:
            results[process] = ckpt.save_checkpoint(
                directory_1 if process and directory_1 else directory, step, weights, state,
                opt, 'treedef', {'rng': {'seed': 1}}, keep,
                pieces=_split_rows(2), process=process, exchange=exchange(process))
        except OSError as e:
            results[process] = e
    _as_two_processes(run)
    return results


def test_each_process_writes_its_pieces_and_numpy_assembles_them(tmp_path):
    json_path, none = _save_two_processes(str(tmp_path), 3, 2.0)
    assert none is None and json_path.endswith('ckpt-00000003.json')
    assert sorted(os.listdir(tmp_path)) == ['ckpt-00000003.json', 'ckpt-00000003.npz',
                                            'ckpt-00000003.p00001.npz']
    meta = json.load(open(json_path))
    assert [f['process'] for f in meta['arrays']] == [0, 1]
    assert meta['leaves']['weights/0']['pieces'] == [[0, [0, 0], [3, 4]], [1, [3, 0], [3, 4]]]
    loaded = ckpt.read_checkpoint(json_path)            # NumPy: whole arrays
    weights, state, opt = _trees(2.0)
    for a, b in zip(fastmath.tree_leaves((loaded.weights, loaded.state,
                                          loaded.opt_state_leaves)),
                    fastmath.tree_leaves((weights, state, opt))):
        np.testing.assert_array_equal(a, b)
    assert loaded.opt_state_leaves[0].dtype == ml_dtypes.bfloat16
    lazy = ckpt.read_checkpoint(json_path, lazy=True)   # a slice across both files
    np.testing.assert_array_equal(lazy.weights[0][2:5, 1:3], weights[0][2:5, 1:3])
    assert lazy.opt_state_leaves[0][1:3].tolist() == opt[0][1:3].tolist()
    os.remove(tmp_path / 'ckpt-00000003.p00001.npz')     # a slice reads only its pieces' files
    np.testing.assert_array_equal(lazy.weights[0][:3, 1:], weights[0][:3, 1:])
    with pytest.raises(shards.PieceError, match='p00001.npz'):
        lazy.weights[0][3:]
    assert lazy.weights[0].shape == (6, 4) and lazy.weights[0].nbytes == 96


def test_process_0_reports_the_commit_before_the_exchange_that_a_lost_peer_never_joins(
        tmp_path):
    """The trainer names the last checkpoint when a peer dies: process 0 learns of its commit
    (on_commit) before the final exchange, where a killed process 1 would leave it waiting."""
    weights, state, opt = _trees(1.0)
    committed, calls = [], []

    def exchange(record):
        calls.append(record)
        if len(calls) == 2:                  # the last exchange: process 1 is gone
            assert committed and os.path.exists(committed[0])
            raise ConnectionError('process 1 was lost')
        return [record, (shards.NONE, 0, '')]   # the shard records: process 1 holds no pieces
    with pytest.raises(ConnectionError):
        ckpt.save_checkpoint(str(tmp_path), 4, weights, state, opt, 'treedef', {}, None,
                             process=0, exchange=exchange, on_commit=committed.append)
    assert committed == [str(tmp_path / 'ckpt-00000004.json')]


def test_missing_or_damaged_shard_file_falls_back_and_moves_all_files_aside(tmp_path):
    _save_two_processes(str(tmp_path), 3, 3.0)
    _save_two_processes(str(tmp_path), 4, 4.0)
    os.remove(tmp_path / 'ckpt-00000004.p00001.npz')
    with pytest.raises(ckpt.CheckpointError, match=r'ckpt-00000004.p00001.npz is missing'):
        ckpt.read_checkpoint(str(tmp_path / 'ckpt-00000004.json'))
    with pytest.warns(RuntimeWarning, match='ckpt-00000004.json.*unusable'):
        restored = checkpointer.Checkpointer(str(tmp_path)).restore()
    assert restored.step == 3 and np.asarray(restored.weights[1]).tolist() == [3, 3, 3]
    assert sorted(os.listdir(tmp_path / 'corrupt')) == ['ckpt-00000004.json',
                                                        'ckpt-00000004.npz']


def _restore_two_processes(directory):
    exchange, results = Exchange(2), [None, None]

    def run(process):
        try:
            results[process] = checkpointer.Checkpointer(directory, write=process == 0).restore(
                exchange=exchange(process), process=process)
        except ckpt.CheckpointError as e:
            results[process] = e
    _as_two_processes(run)
    return results


@pytest.mark.filterwarnings('ignore:checkpoint .* is unusable')
def test_processes_share_the_hashing_and_agree_on_a_corrupt_shard_file(tmp_path, caplog):
    _save_two_processes(str(tmp_path), 3, 3.0)
    _save_two_processes(str(tmp_path), 4, 4.0)
    shard = tmp_path / 'ckpt-00000004.p00001.npz'    # hashed by process 1 only
    data = bytearray(shard.read_bytes())
    data[data.index(np.float32(48.0).tobytes())] ^= 1  # a value of weights/0's rows 3-5
    shard.write_bytes(bytes(data))
    first, second = _restore_two_processes(str(tmp_path))
    assert first.step == second.step == 3
    assert 'process 1 found it corrupt' in caplog.text and 'sha256 of' in caplog.text
    assert sorted(os.listdir(tmp_path / 'corrupt')) == [
        'ckpt-00000004.json', 'ckpt-00000004.npz', 'ckpt-00000004.p00001.npz']
    os.remove(tmp_path / 'ckpt-00000003.p00001.npz')   # as if process 1 had its own dir
    os.mkdir(tmp_path / 'other')
    exchange, results = Exchange(2), [None, None]
    threads = [threading.Thread(target=lambda p=p, d=d: results.__setitem__(p, _expect_error(
        lambda: checkpointer.Checkpointer(d).restore(exchange=exchange(p), process=p))))
        for p, d in ((0, str(tmp_path)), (1, str(tmp_path / 'other')))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all('the processes found different checkpoints (process 0: 1, the newest step 3, '
               'process 1: none)' in r for r in results), results


def _expect_error(fn):
    try:
        fn()
    except ckpt.CheckpointError as e:
        return str(e)
    return 'no error'


def test_a_failed_shard_write_commits_nothing_on_any_process(tmp_path):
    _save_two_processes(str(tmp_path), 3, 3.0)
    (tmp_path / 'ckpt-00000005.p00001.npz').mkdir()      # process 1 cannot write its file
    results = _save_two_processes(str(tmp_path), 5, 5.0)
    assert isinstance(results[1], OSError)
    assert 'process 1 could not write its shard file of step 5' in str(results[0])
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [3]


def test_processes_writing_to_different_directories_commit_nothing(tmp_path):
    results = _save_two_processes(str(tmp_path / 'a'), 3, 3.0, directory_1=str(tmp_path / 'b'))
    assert 'every process must write to the same checkpoint directory' in str(results[0])
    assert 'process 0 could not commit the checkpoint of step 3' in str(results[1])
    assert ckpt.list_checkpoints(str(tmp_path / 'a')) == []


def test_keep_prunes_the_shard_files_of_every_process(tmp_path):
    for step in (1, 2, 3):
        _save_two_processes(str(tmp_path), step, float(step), keep=2)
    assert sorted(os.listdir(tmp_path)) == [
        f'ckpt-0000000{s}{suffix}' for s in (2, 3)
        for suffix in ('.json', '.npz', '.p00001.npz')]


def test_version_2_checkpoints_still_load(tmp_path):
    """A version-2 checkpoint (one .npz of whole arrays) as the previous release wrote it."""
    weights = (np.arange(6, dtype=np.float32).reshape(2, 3),)
    npz = tmp_path / 'ckpt-00000007.npz'
    np.savez(npz, **{'weights/0': weights[0], 'opt_state/000000': np.array(1, np.int32)})
    meta = {'format': ckpt.FORMAT, 'format_version': 2, 'step': 7,
            'arrays': {'file': npz.name, 'sha256': ckpt.sha256_of(npz),
                       'bytes': os.path.getsize(npz)},
            'trees': {'weights': ['*'], 'state': [], 'opt_state': {'treedef': 't',
                                                                    'n_leaves': 1}},
            'leaves': {'weights/0': {'dtype': 'float32', 'shape': [2, 3]},
                       'opt_state/000000': {'dtype': 'int32', 'shape': []}},
            'rng': {'seed': 4}}
    meta[ckpt.METADATA_SHA256] = ckpt.metadata_digest(meta)
    (tmp_path / 'ckpt-00000007.json').write_text(json.dumps(meta))
    loaded_weights, state = ckpt.load_weights(str(tmp_path))
    np.testing.assert_array_equal(loaded_weights[0], weights[0])
    lazy = ckpt.read_checkpoint(str(tmp_path / 'ckpt-00000007.json'), lazy=True)
    assert lazy.weights[0][1:, 2:].tolist() == [[5.0]] and lazy.opt_state_leaves[0][()] == 1


# ---- acceptance: 8 CPU devices, other meshes, 2 processes, kill -9 -----------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _child(*args):
    return subprocess.Popen([sys.executable, '-m', 'tests.training.sharded_child', *args],
                            cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _leaves(path):
    with np.load(path) as saved:
        return [saved[f'arr_{i}'] for i in range(len(saved.files))]


def test_sharded_checkpoint_restores_onto_other_meshes_and_processes(tmp_path):
    """Saved on {'data': 2, 'model': 4} with FSDP (8 devices, one process): restored onto
    {'data': 8}, onto 1 device and onto 2 processes x 4 devices over 127.0.0.1, the weights
    are identical and the next steps' losses equal those of the saving run. 2 processes x 4
    devices train from scratch with the losses of 1 process x 8 devices, each process writing
    its own pieces of the checkpoints. A
    kill -9 in the middle of a save (of a shard file; before the commit record after every
    process wrote its shards) leaves the previous checkpoint usable."""
    base = str(tmp_path)
    single = _child('single', base)
    _, err = single.communicate(timeout=240)
    assert single.returncode == -signal.SIGKILL, err[-3000:]
    result = json.load(open(tmp_path / 'single.json'))
    reference = result['losses']                      # steps 1-4 on the saving mesh
    for name, devices in (('data8', 8), ('one', 1)):
        assert result[name]['step'] == 2 and result[name]['n_devices'] == devices
        assert result[name]['same_weights'], name
        np.testing.assert_allclose(result[name]['losses'], reference[2:], rtol=1e-6)
    # Killed while writing its step-5 shard file: step 4 is the newest usable checkpoint,
    # and the NumPy backend assembles it from the pieces.
    saved = str(tmp_path / 'saved' / 'checkpoints')
    assert [s for s, _ in ckpt.list_checkpoints(saved)][-1] == 4
    assert any(n.startswith('.tmp-') and 'ckpt-00000005' in n for n in os.listdir(saved))
    with fastmath.use_backend('numpy'):
        weights, _ = ckpt.load_weights(saved)
    for a, b in zip(fastmath.tree_leaves(weights), _leaves(tmp_path / 'w4.npz')):
        np.testing.assert_array_equal(a, b)

    address = f'127.0.0.1:{_free_port()}'
    hosts = [_child('multi', base, address, str(i)) for i in range(2)]
    _, err = hosts[0].communicate(timeout=240)
    assert hosts[0].returncode == -signal.SIGKILL, err[-3000:]
    try:
        hosts[1].wait(timeout=5)
    except subprocess.TimeoutExpired:
        hosts[1].kill()                               # waiting on the dead process 0
    hosts[1].communicate()
    for i in range(2):
        multi = json.load(open(tmp_path / f'multi-{i}.json'))
        assert multi['step'] == 2 and multi['n_devices'] == 8 and multi['same_weights']
        np.testing.assert_allclose(multi['fresh'], reference[:2], rtol=1e-6)
        np.testing.assert_allclose(multi['losses'], reference[2:], rtol=1e-6)
    fresh = str(tmp_path / 'fresh' / 'checkpoints')
    newest = ckpt.read_checkpoint(ckpt.list_checkpoints(fresh)[-1][1])
    assert newest.step == 2 and [f['process'] for f in newest.metadata['arrays']] == [0, 1]
    for a, b in zip(fastmath.tree_leaves(newest.weights), _leaves(tmp_path / 'w2.npz')):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    two = str(tmp_path / 'two' / 'checkpoints')
    assert {'ckpt-00000005.npz', 'ckpt-00000005.p00001.npz'} <= set(os.listdir(two))
    newest = ckpt.read_checkpoint(ckpt.list_checkpoints(two)[-1][1])
    assert newest.step == 4 and [f['process'] for f in newest.metadata['arrays']] == [0, 1]
    for a, b in zip(fastmath.tree_leaves(newest.weights), _leaves(tmp_path / 'w4.npz')):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
