"""Checkpoint format: round trip, atomic writes, corruption fallback, keep-last-k, no pickle."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from trax_sparse.training import checkpoint as ckpt


def _trees(seed: float = 1.0):
    weights = ((np.full((2, 3), seed, np.float32), np.arange(3, dtype=np.float32)), (),
               {'scale': (np.ones(4) * seed).astype(ml_dtypes.bfloat16)})
    state = (np.array(7, np.int32), (np.array([True, False]),), None)
    return weights, state


def _save(directory, step, seed=1.0, keep=None):
    weights, state = _trees(seed)
    opt = [np.array(step, np.int32), np.full((2, 3), -seed, np.float32)]
    return ckpt.save_checkpoint(str(directory), step, weights, state, opt, 'treedef-text',
                                {'rng': {'seed': 3}, 'data_position': {'batches': step}},
                                keep=keep)


def _assert_same(a, b):
    assert ckpt.tree_to_json(a) == ckpt.tree_to_json(b)
    for (_, x), (_, y) in zip(ckpt.flatten_with_keys(a, 'r'), ckpt.flatten_with_keys(b, 'r')):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.astype(np.float64), y.astype(np.float64))


def test_round_trip_keeps_trees_dtypes_and_metadata(tmp_path):
    json_path = _save(tmp_path, 10)
    loaded = ckpt.read_checkpoint(json_path)
    weights, state = _trees()
    _assert_same(loaded.weights, weights)
    _assert_same(loaded.state, state)
    assert loaded.weights[2]['scale'].dtype == ml_dtypes.bfloat16
    assert loaded.step == 10 and loaded.metadata['rng'] == {'seed': 3}
    assert loaded.metadata['data_position'] == {'batches': 10}
    np.testing.assert_array_equal(loaded.opt_state_leaves[1], -np.ones((2, 3)))
    meta = json.load(open(json_path))
    assert meta['format'] == 'trax_sparse.checkpoint' and meta['format_version'] == 3
    assert meta['leaves']['weights/0/0'] == {'dtype': 'float32', 'shape': [2, 3],
                                             'pieces': [[0, [0, 0], [2, 3]]]}
    assert meta['leaves']['weights/2/scale']['dtype'] == 'bfloat16'
    [shard] = meta['arrays']
    assert shard['file'] == 'ckpt-00000010.npz' and shard['process'] == 0
    assert len(shard['sha256']) == 64


def test_keep_last_k(tmp_path):
    for step in (2, 4, 6, 8, 10):
        _save(tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [8, 10]
    assert sorted(os.listdir(tmp_path)) == ['ckpt-00000008.json', 'ckpt-00000008.npz',
                                            'ckpt-00000010.json', 'ckpt-00000010.npz']


def test_crash_while_writing_arrays_leaves_previous_checkpoint_valid(tmp_path, monkeypatch):
    _save(tmp_path, 5)

    def crash_mid_write(f, **arrays):
        f.write(b'PK\x03\x04 half an archive')
        raise KeyboardInterrupt('killed while writing')

    monkeypatch.setattr(ckpt.np, 'savez', crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 10)
    assert sorted(os.listdir(tmp_path)) == ['ckpt-00000005.json', 'ckpt-00000005.npz']
    assert ckpt.load_latest(str(tmp_path)).step == 5


def test_crash_between_arrays_and_metadata_is_not_a_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 5)
    real = ckpt.atomic_write_text

    def crash(path, text):
        raise OSError('disk full')

    monkeypatch.setattr(ckpt, 'atomic_write_text', crash)
    with pytest.raises(OSError):
        _save(tmp_path, 10, seed=2.0)
    assert os.path.exists(tmp_path / 'ckpt-00000010.npz')  # orphan arrays, no metadata
    assert ckpt.load_latest(str(tmp_path)).step == 5
    monkeypatch.setattr(ckpt, 'atomic_write_text', real)
    _save(tmp_path, 10, seed=3.0)  # the step can be written again
    assert float(ckpt.load_latest(str(tmp_path)).weights[0][0][0, 0]) == 3.0


def test_leftover_temp_files_are_removed(tmp_path):
    _save(tmp_path, 5)
    (tmp_path / '.tmp-abc-ckpt-00000010.npz').write_bytes(b'partial')
    ckpt.remove_temp_files(str(tmp_path))
    assert not any(n.startswith('.tmp-') for n in os.listdir(tmp_path))


@pytest.mark.parametrize('damage', ['truncate', 'bitflip', 'metadata'])
def test_damaged_newest_checkpoint_is_reported_and_previous_used(tmp_path, damage):
    _save(tmp_path, 5, seed=5.0)
    newest = _save(tmp_path, 10, seed=10.0)
    npz = newest.replace('.json', '.npz')
    if damage == 'truncate':
        with open(npz, 'r+b') as f:
            f.truncate(os.path.getsize(npz) // 2)
    elif damage == 'bitflip':
        data = bytearray(open(npz, 'rb').read())
        data[len(data) // 2] ^= 0x01
        open(npz, 'wb').write(bytes(data))
    else:
        text = open(newest).read()
        open(newest, 'w').write(text[:len(text) // 2])
    with pytest.warns(RuntimeWarning, match='ckpt-00000010.json.*unusable') as record:
        loaded = ckpt.load_latest(str(tmp_path))
    assert loaded.step == 5 and float(loaded.weights[0][0][0, 0]) == 5.0
    reason = str(record[0].message)
    expected = {'truncate': 'truncated', 'bitflip': 'sha256', 'metadata': 'unreadable metadata'}
    assert expected[damage] in reason


def test_archive_with_a_pickled_object_is_refused(tmp_path):
    json_path = _save(tmp_path, 5)
    npz = json_path.replace('.json', '.npz')
    np.savez(npz, **{'weights/0/0': np.array([{'run': 'code'}], dtype=object)})
    meta = json.load(open(json_path))
    meta['arrays'][0].update(sha256=ckpt.sha256_of(npz), bytes=os.path.getsize(npz))
    meta['leaves'] = {'weights/0/0': {'dtype': 'object', 'shape': [1],
                                      'pieces': [[0, [0], [1]]]}}
    meta['trees'] = {'weights': [['*']], 'state': [], 'opt_state': {'n_leaves': 0}}
    meta[ckpt.METADATA_SHA256] = ckpt.metadata_digest(meta)  # a consistent forgery
    json.dump(meta, open(json_path, 'w'))
    with pytest.raises(ckpt.CheckpointError, match='allow_pickle=False'):
        ckpt.read_checkpoint(json_path)


def test_load_weights_from_output_dir_and_errors(tmp_path):
    _save(tmp_path / 'checkpoints', 3)
    weights, state = ckpt.load_weights(str(tmp_path))
    _assert_same(weights, _trees()[0])
    _assert_same(state, _trees()[1])
    with pytest.raises(ckpt.CheckpointError, match='no usable checkpoint in'):
        ckpt.load_weights(str(tmp_path / 'empty'))


def test_checksum_covers_the_stored_config(tmp_path):
    json_path = ckpt.save_checkpoint(str(tmp_path), 3, _trees()[0], _trees()[1], [], '',
                                     {'gin_config': 'TransformerLM.n_heads = 4\n'})
    assert ckpt.read_checkpoint(json_path).metadata['gin_config'].endswith('= 4\n')
    text = open(json_path).read()
    assert 'n_heads = 4' in text
    open(json_path, 'w').write(text.replace('n_heads = 4', 'n_heads = 8'))
    with pytest.raises(ckpt.CheckpointError, match='metadata_sha256 does not match.*corrupt'):
        ckpt.read_checkpoint(json_path)
    with pytest.warns(RuntimeWarning, match='unusable'), \
            pytest.raises(ckpt.CheckpointError, match='no usable checkpoint'):
        ckpt.load_weights(str(tmp_path))


def test_checkpoints_need_no_data_package():
    script = ('import sys; import trax_sparse.training.checkpoint as c; '
              "assert c.sha256_of.__module__ == 'trax_sparse.io_utils'; "
              "bad = [m for m in sys.modules if m.startswith('trax_sparse.data')]; "
              'assert not bad, bad')
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, '-c', script], cwd=root, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from trax_sparse.data import corpora
    assert corpora.sha256_of is ckpt.sha256_of  # still importable from data
