"""Data parallelism on 8 forced CPU devices (a subprocess: XLA_FLAGS must precede jax)."""
import json
import subprocess
import sys
import textwrap

import numpy as np

from tests.training.conftest import subprocess_env

SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    from trax_sparse import fastmath, training
    from tests.training import tiny

    def train(n_devices):
        # SGD: its update is linear in the gradient, so a wrongly scaled all-reduce shows.
        task = training.TrainTask(tiny.CountingStream(batch_size=8), optimizer=training.SGD(),
                                  lr_schedule=training.constant(1.0), n_steps_per_checkpoint=1)
        loop = training.Loop(tiny.TinyLM(), task, n_devices=n_devices, random_seed=3)
        loop.run(3)
        losses = [r['loss'] for r in loop.history if r['split'] == 'train']
        return loop, losses

    out = {'device_count': fastmath.device_count()}
    with fastmath.use_backend('jax'):
        parallel = training.DataParallel(8)
        batch = parallel.shard_batch(tiny.counting_batch(0, batch_size=8))
        out['batch_devices'] = fastmath.backend().sharding_device_count(batch[0])
        out['shard_shapes'] = sorted({tuple(s.data.shape) for s in batch[0].addressable_shards})
        loop8, out['losses_8'] = train(8)
        weight = loop8._train_state.weights[1][0]
        out['weights_devices'] = fastmath.backend().sharding_device_count(weight)
        loop1, out['losses_1'] = train(1)
        out['max_weight_diff'] = max(float(np.abs(a - b).max()) for a, b in zip(
            fastmath.tree_leaves(loop8.weights), fastmath.tree_leaves(loop1.weights)))
        try:
            parallel.shard_batch(tiny.counting_batch(0, batch_size=6))
        except ValueError as e:
            out['bad_batch_error'] = str(e)
    print('RESULT ' + json.dumps(out))
''')


def test_data_parallel_loss_on_8_devices_equals_single_device():
    env = subprocess_env(XLA_FLAGS='--xla_force_host_platform_device_count=8')
    result = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.split('RESULT ')[1])
    assert out['device_count'] == 8
    assert out['batch_devices'] == 8 and out['shard_shapes'] == [[1, 6]]
    assert out['weights_devices'] == 8  # replicated on every device
    assert len(out['losses_8']) == 3
    np.testing.assert_allclose(out['losses_8'], out['losses_1'], rtol=1e-6, atol=1e-6)
    assert out['losses_8'][-1] < out['losses_8'][0]
    assert out['max_weight_diff'] < 1e-5
    assert 'batch size divisible by 8' in out['bad_batch_error']
