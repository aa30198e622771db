"""Multi-host: 2 trainer processes joined by jax.distributed over 127.0.0.1 (2 CPU devices each,
gloo collectives), each reading its shard of the data, train with the same losses as 1 trainer
process with 4 devices on the same global batch."""
import os
import socket
import subprocess
import sys

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
