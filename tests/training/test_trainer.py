"""The gin trainer binary, in subprocesses: kill -9 and resume, config errors, bad dirs."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse import training
from tests.training import tiny
from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = f"""
import tests.training.gin_tiny

train.model = @TinyLM
train.inputs = @CountingStream
train.eval_inputs = @eval/CountingStream
eval/CountingStream.seed = 1
train.optimizer = @Adam
train.lr_schedule = @training.constant
training.constant.value = {tiny.LEARNING_RATE}
train.steps = 10
train.checkpoint_every = 5
train.eval_steps = 2
CountingStream.delay_seconds = 0.02
"""


def _command(config_file, output_dir, *flags):
    return [sys.executable, '-m', 'trax_sparse.trainer', f'--config_file={config_file}',
            f'--output_dir={output_dir}', '--noplot', *flags]


def _run(*args, timeout=240):
    return subprocess.run(_command(*args), cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in training.loop.TIMING_METRICS}
            for r in records]


@pytest.mark.parametrize('compute_dtype', ['float32', 'bfloat16'])
def test_kill_9_then_same_command_resumes_and_matches_uninterrupted_run(tmp_path,
                                                                        compute_dtype):
    config = tmp_path / 'tiny.gin'
    config.write_text(GIN + f"TinyLM.compute_dtype = '{compute_dtype}'\n")
    steps = '--config=train.steps = 30'
    straight = subprocess.Popen(_command(config, tmp_path / 'straight', steps), cwd=ROOT,
                                env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / 'straight.log', 'w'))
    victim = subprocess.Popen(_command(config, tmp_path / 'killed', steps), cwd=ROOT,
                              env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / 'victim.log', 'w'))
    marker = tmp_path / 'killed' / 'checkpoints' / 'ckpt-00000010.json'
    deadline = time.time() + 240
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, (tmp_path / 'victim.log').read_text()
    saved = [s for s, _ in training.checkpoint.list_checkpoints(str(marker.parent))]
    assert saved and 10 <= max(saved) < 30, saved

    rerun = _run(config, tmp_path / 'killed', steps)
    assert rerun.returncode == 0, rerun.stderr
    assert f'resumed from {marker.parent}' in rerun.stderr
    assert straight.wait(timeout=240) == 0, (tmp_path / 'straight.log').read_text()

    expected = training.read_metrics(str(tmp_path / 'straight'))
    got = training.read_metrics(str(tmp_path / 'killed'))
    assert [(r['step'], r['split']) for r in expected][-2:] == [(30, 'train'), (30, 'eval')]
    assert _without_timing(got) == _without_timing(expected)
    assert abs(expected[-2]['learning_rate'] - tiny.LEARNING_RATE) < 1e-8  # gin's binding
    for a, b in zip(fastmath.tree_leaves(training.load_weights(str(tmp_path / 'straight'))),
                    fastmath.tree_leaves(training.load_weights(str(tmp_path / 'killed')))):
        np.testing.assert_array_equal(a, b)
    operative = (tmp_path / 'killed' / 'config.gin').read_text()
    assert 'TinyLM' in operative and 'constant.value = 0.05' in operative, operative
    assert f"TinyLM.compute_dtype = '{compute_dtype}'" in operative   # (bfloat16: issue 20)
    meta = json.load(open(training.checkpoint.list_checkpoints(str(marker.parent))[-1][1]))
    assert meta['step'] == 30 and 'constant.value = 0.05' in meta['gin_config']


def test_unknown_gin_binding_is_named_and_nothing_written_is_lost(tmp_path):
    config = tmp_path / 'tiny.gin'
    config.write_text(GIN)
    out = tmp_path / 'out'
    (out / 'checkpoints').mkdir(parents=True)
    (out / 'metrics.jsonl').write_text('{"step": 5, "split": "train", "loss": 1.0}\n')
    (out / 'checkpoints' / 'ckpt-00000005.json').write_text('{}')
    before = {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}
    result = _run(config, out, '--config=train.stepz = 3')
    assert result.returncode == 1
    assert "trax-sparse-train: error: in the gin config" in result.stderr
    assert 'stepz' in result.stderr
    result = _run(config, out, '--config=NoSuchLayer.n_units = 3')
    assert result.returncode == 1 and "No configurable matching 'NoSuchLayer'" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob('*') if p.is_file()} == before


def test_unwritable_output_dir_fails_at_once(tmp_path):
    config = tmp_path / 'tiny.gin'
    config.write_text(GIN)
    (tmp_path / 'a_file').write_text('')
    result = _run(config, tmp_path / 'a_file' / 'out', timeout=120)
    assert result.returncode == 1
    assert f'output_dir {tmp_path / "a_file" / "out"} is not a writable directory' in \
        result.stderr
    assert 'Traceback' not in result.stderr
