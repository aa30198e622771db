"""Multi-host: 2 trainer processes joined by jax.distributed over 127.0.0.1 (2 CPU devices each,
gloo collectives), each reading its shard of the data, train with the same losses as 1 trainer
process with 4 devices on the same global batch."""
import os
import socket
import subprocess
import sys
import time

import numpy as np

from trax_sparse import training
from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = """
import tests.training.gin_tiny

train.model = @TinyLM
train.inputs = @CountingStream
CountingStream.batch_size = 8         # the global batch: each process reads its rows
train.optimizer = @SGD                # its update is linear in the gradient: a wrong
train.lr_schedule = @training.constant  # all-reduce would show
training.constant.value = 0.5
train.steps = 3
train.checkpoint_every = 1
CountingStream.signal_at = 1          # SIGTERM to the process of shard 1 (none in the
CountingStream.signal_shard = 1       # single-process run) while step 2 trains
"""


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _start(tmp_path, devices, n_processes, process_id, address):
    """The trainer binary; multi-host flags when n_processes > 1 (it picks gloo on CPU)."""
    env = subprocess_env(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    (tmp_path / 'tiny.gin').write_text(GIN)
    command = [sys.executable, '-m', 'trax_sparse.trainer', f'--config_file={tmp_path}/tiny.gin',
               f'--output_dir={tmp_path}/run{n_processes}-{process_id}', '--noplot']
    if n_processes > 1:
        command += [f'--coordinator_address={address}', f'--num_processes={n_processes}',
                    f'--process_id={process_id}']
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _losses(process, output_dir):
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]
    return [r['loss'] for r in training.read_metrics(str(output_dir)) if r['split'] == 'train']


def test_two_trainer_processes_equal_one_process_with_four_devices(tmp_path):
    """... and a SIGTERM to one of them stops both after the same step, with a checkpoint."""
    address = f'127.0.0.1:{_free_port()}'
    hosts = [_start(tmp_path, 2, 2, i, address) for i in range(2)]
    single = _start(tmp_path, 4, 1, 0, address)
    reference = _losses(single, tmp_path / 'run1-0')
    two_hosts = _losses(hosts[0], tmp_path / 'run2-0')
    assert _losses(hosts[1], tmp_path / 'run2-1') == []  # only process 0 writes metrics
    assert len(reference) == 3 and len(two_hosts) == 2  # both processes stopped at step 2
    # Equal losses need each process to feed its own half of the global batch: two copies of
    # the same rows would make another batch (and another loss).
    np.testing.assert_allclose(two_hosts, reference[:2], rtol=1e-6)
    saved = training.checkpoint.list_checkpoints(str(tmp_path / 'run2-0' / 'checkpoints'))
    assert [step for step, _ in saved] == [1, 2]


KILL_GIN = """
import tests.training.gin_tiny

train.model = @TinyLM
train.inputs = @CountingStream
CountingStream.batch_size = 8
CountingStream.delay_seconds = 0.2    # slow steps: the kill lands between checkpoints
train.steps = 1000
train.checkpoint_every = 2
"""


def test_kill_9_of_one_process_stops_the_other_with_one_line(tmp_path):
    """Issue 23: the survivor stops at once, naming the lost process and the last checkpoint,
    status 1, no traceback and no C++ abort (it used to hang, then dump a stack)."""
    address = f'127.0.0.1:{_free_port()}'
    (tmp_path / 'kill.gin').write_text(KILL_GIN)
    env = subprocess_env(XLA_FLAGS='--xla_force_host_platform_device_count=1')
    processes = [subprocess.Popen(
        [sys.executable, '-m', 'trax_sparse.trainer', f'--config_file={tmp_path}/kill.gin',
         f'--output_dir={tmp_path}/run{i}', '--noplot', f'--coordinator_address={address}',
         '--num_processes=2', f'--process_id={i}', '--peer_timeout=20'],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    marker = tmp_path / 'run0' / 'checkpoints' / 'ckpt-00000002.json'
    deadline = time.monotonic() + 90
    while not marker.exists() and time.monotonic() < deadline and \
            all(p.poll() is None for p in processes):
        time.sleep(0.1)
    assert marker.exists(), [p.poll() for p in processes]
    processes[1].kill()
    killed_at = time.monotonic()
    _, err = processes[0].communicate(timeout=max(5, deadline - killed_at))
    processes[1].communicate()
    lines = err.strip().splitlines()
    assert processes[0].returncode == 1, err[-3000:]
    assert time.monotonic() - killed_at < 30
    assert lines[-1].startswith('trax-sparse-train: error: lost process 1 of 2 (exited or was '
                                'killed); stopping this process (0); the last checkpoint is '
                                f'step '), lines[-1]
    assert f'({tmp_path}/run0/checkpoints/ckpt-' in lines[-1]
    assert 'Traceback' not in err and 'Check failure' not in err and '*** ' not in err
