"""Multi-host: 2 processes joined by jax.distributed over 127.0.0.1 (2 CPU devices each, gloo
collectives), each reading its shard of the data through train(), train with the same losses
as 1 process with 4 devices on the same global batch."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    from trax_sparse import fastmath, training
    from tests.training import tiny

    address, n_processes, process_id, output_dir = sys.argv[1:]
    if int(n_processes) > 1:
        training.initialize_distributed(address, int(n_processes), int(process_id))
    fastmath.set_backend('jax')
    # SGD: the update is linear in the gradient, so a wrong all-reduce would show.
    loop = training.train(output_dir, model=tiny.TinyLM,
                          inputs=lambda **shard: tiny.CountingStream(batch_size=8, **shard),
                          optimizer=training.SGD, lr_schedule=lambda: training.constant(0.5),
                          steps=3, checkpoint_every=1, eval_every=1000)
    rows = loop._train_feed.peek()[0].shape[0]
    losses = [r['loss'] for r in loop.history if r['split'] == 'train']
    print('RESULT ' + json.dumps({'losses': losses, 'rows': rows, 'devices': loop.n_devices,
                                  'process': training.process_index()}))
''')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _start(tmp_path, devices, n_processes, process_id, address):
    env = subprocess_env(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    command = [sys.executable, '-c', SCRIPT, address, str(n_processes), str(process_id),
               str(tmp_path / f'run{n_processes}-{process_id}')]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(process):
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.split('RESULT ')[1])


def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    address = f'127.0.0.1:{_free_port()}'
    hosts = [_start(tmp_path, 2, 2, i, address) for i in range(2)]
    single = _start(tmp_path, 4, 1, 0, address)
    results = [_result(p) for p in hosts]
    reference = _result(single)
    assert [r['process'] for r in results] == [0, 1]
    assert [r['rows'] for r in results] == [4, 4]  # each process reads its half of the batch
    assert reference['rows'] == 8 and reference['devices'] == 4
    assert results[0]['devices'] == 4
    assert len(reference['losses']) == 3
    for r in results:
        np.testing.assert_allclose(r['losses'], reference['losses'], rtol=1e-6)
    assert not os.path.exists(tmp_path / 'run2-1' / 'metrics.jsonl')  # process 0 writes
