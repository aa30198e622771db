"""Work is never lost: unusable checkpoints, directory checks, signals, umask, strict JSON."""
import json
import os
import stat

import numpy as np
import pytest

from trax_sparse import fastmath, io_utils
from trax_sparse import training
from trax_sparse.training import checkpoint as ckpt
from trax_sparse.training import checkpointer
from tests.training import tiny


def _task(stream=None, every=2):
    return training.TrainTask(stream if stream is not None else tiny.CountingStream(),
                              optimizer=training.Adam(),
                              lr_schedule=training.constant(tiny.LEARNING_RATE),
                              n_steps_per_checkpoint=every)


def _loop(directory, stream=None, **kwargs):
    return training.Loop(tiny.TinyLM(), _task(stream), output_dir=str(directory),
                         random_seed=5, progress_bar=False, **kwargs)


def _files(directory):
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in directory.rglob('*') if p.is_file()}


def _bitflip(json_path):
    npz = json_path.replace('.json', '.npz')
    data = bytearray(open(npz, 'rb').read())
    data[len(data) // 2] ^= 0x01
    open(npz, 'wb').write(bytes(data))


def test_all_checkpoints_unusable_refuses_and_restart_moves_them_aside(tmp_path):
    loop = _loop(tmp_path)
    loop.run(2)
    loop.close()
    _bitflip(loop.last_checkpoint)
    before = _files(tmp_path)
    assert 'metrics.jsonl' in before and any(n.startswith('train/') for n in before)
    with pytest.raises(ckpt.CheckpointError, match=r'every checkpoint in .* is unusable.*'
                       r'sha256.*nothing was changed.*--restart'):
        _loop(tmp_path)
    assert _files(tmp_path) == before  # not a byte moved, metrics and TensorBoard untouched

    with pytest.warns(RuntimeWarning, match='ckpt-00000002.json .*unusable.*moved to'):
        restarted = _loop(tmp_path, restart=True)
    assert restarted.step == 0
    corrupt = tmp_path / 'checkpoints' / 'corrupt'
    assert sorted(os.listdir(corrupt)) == ['ckpt-00000002.json', 'ckpt-00000002.npz']
    assert (corrupt / 'ckpt-00000002.npz').read_bytes() == \
        before['checkpoints/ckpt-00000002.npz']
    assert (tmp_path / 'previous-run' / 'metrics.jsonl').read_bytes() == before['metrics.jsonl']
    restarted.run(2)
    restarted.close()
    assert ckpt.read_checkpoint(restarted.last_checkpoint).step == 2
    assert (corrupt / 'ckpt-00000002.npz').read_bytes() == \
        before['checkpoints/ckpt-00000002.npz']  # the new step-2 checkpoint went elsewhere
    assert [r['step'] for r in training.read_metrics(str(tmp_path))] == [1, 2]


def test_newer_corrupt_checkpoint_is_moved_aside_not_overwritten(tmp_path):
    loop = _loop(tmp_path)
    loop.run(4)
    loop.close()
    _bitflip(loop.last_checkpoint)
    damaged = open(loop.last_checkpoint.replace('.json', '.npz'), 'rb').read()
    with pytest.warns(RuntimeWarning, match='step 4.*unusable.*using an older one'):
        resumed = _loop(tmp_path)
    assert resumed.step == 2
    resumed.run(2)
    resumed.close()
    corrupt = tmp_path / 'checkpoints' / 'corrupt'
    assert (corrupt / 'ckpt-00000004.npz').read_bytes() == damaged
    assert ckpt.read_checkpoint(resumed.last_checkpoint).step == 4


def test_directories_are_checked_before_the_first_step(tmp_path, monkeypatch):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'checkpoints').write_text('a file where the checkpoint dir should be')
    with pytest.raises(training.OutputDirError,
                       match=r'checkpoint dir .*checkpoints is not a writable directory'):
        _loop(tmp_path / 'a')

    class Usage:
        free = 4096
    monkeypatch.setattr(io_utils.shutil, 'disk_usage', lambda path: Usage)
    with pytest.raises(training.OutputDirError, match=r'checkpoint dir .* has 0.0 MiB free; one '
                       r'checkpoint needs about .* MiB'):
        _loop(tmp_path / 'b')
    assert not (tmp_path / 'b' / 'metrics.jsonl').exists()
    assert ckpt.list_checkpoints(str(tmp_path / 'b' / 'checkpoints')) == []


def test_save_time_oserror_names_the_step_and_keeps_previous_checkpoints(tmp_path, monkeypatch):
    loop = _loop(tmp_path)
    loop.run(2)

    def disk_full(f, **arrays):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(ckpt.np, 'savez', disk_full)
    with pytest.raises(training.CheckpointWriteError, match=r'could not write the checkpoint of '
                       r'step 4 to .*: No space left on device.*intact'):
        loop.run(2)
    assert [s for s, _ in ckpt.list_checkpoints(loop.checkpoint_dir)] == [2]
    assert not [n for n in os.listdir(loop.checkpoint_dir) if n.startswith('.tmp-')]


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGINT'])
def test_signal_saves_a_checkpoint_and_resume_is_exact(tmp_path, name):
    straight = _loop(tmp_path / 'straight')
    straight.run(7)
    stopped = _loop(tmp_path / 'stopped', stream=tiny.CountingStream(signal_at=2,
                                                                   signal_name=name))
    stopped.run(7)  # the signal comes while the batch of step 3 is drawn: step 3 ends, saved
    stopped.close()
    assert stopped.interrupted == name and stopped.step == 3
    assert stopped.last_checkpoint.endswith('ckpt-00000003.json')  # off the every-2 schedule
    resumed = _loop(tmp_path / 'stopped')
    assert resumed.step == 3
    resumed.run(4)
    for a, b in zip(fastmath.tree_leaves(training.load_weights(str(tmp_path / 'straight'))),
                    fastmath.tree_leaves(training.load_weights(str(tmp_path / 'stopped')))):
        np.testing.assert_array_equal(a, b)


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        loop = _loop(tmp_path)
        loop.run(2)
        loop.close()
        io_utils.atomic_write_text(str(tmp_path / 'x.txt'), 'x')
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in _files(tmp_path)}
    assert modes['checkpoints/ckpt-00000002.npz'] == 0o640, modes
    assert set(modes.values()) == {0o640}, modes


def test_metrics_jsonl_is_strict_json(tmp_path):
    writer = training.MetricsWriter(str(tmp_path), tensorboard=False)
    for value in (1.5, float('nan'), float('inf'), -float('inf')):
        writer.write({'step': 1, 'split': 'train', 'loss': value})
    writer.close()

    def refuse(name):
        raise ValueError(f'not strict JSON: {name}')
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(line, parse_constant=refuse)['loss'] for line in lines] == \
        [1.5, 'NaN', 'Infinity', '-Infinity']
    values = [r['loss'] for r in training.read_metrics(str(tmp_path))]
    assert values[0] == 1.5 and np.isnan(values[1]) and values[2:] == [np.inf, -np.inf]


def test_move_aside_never_overwrites(tmp_path):
    for content in (b'first', b'second'):
        for path in ckpt.checkpoint_paths(str(tmp_path), 3):
            open(path, 'wb').write(content)
        checkpointer.move_aside(str(tmp_path), 3)
    assert sorted(os.listdir(tmp_path / 'corrupt')) == [
        'ckpt-00000003.json', 'ckpt-00000003.json.1', 'ckpt-00000003.npz',
        'ckpt-00000003.npz.1']
    assert (tmp_path / 'corrupt' / 'ckpt-00000003.npz.1').read_bytes() == b'second'


def test_other_processes_replay_their_shard_not_the_stream_state_of_process_0(tmp_path,
                                                                            monkeypatch):
    _loop(tmp_path / 'run').run(4)
    straight = _loop(tmp_path / 'straight')
    straight.run(6)
    monkeypatch.setattr(training.loop, 'is_primary', lambda: False)  # as process 1 of 2
    stream = tiny.CountingStream()
    monkeypatch.setattr(stream, 'restore', lambda state: pytest.fail('restored a foreign state'))
    resumed = _loop(tmp_path / 'run', stream=stream)
    assert resumed.step == 4 and stream.index == 5  # 4 batches replayed, 1 peeked
    resumed.run(2)
    for a, b in zip(fastmath.tree_leaves(resumed.weights), fastmath.tree_leaves(straight.weights)):
        np.testing.assert_array_equal(a, b)
