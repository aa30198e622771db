"""The processes of test_sharded_checkpoint.py (8 CPU devices in all; jax starts here).

    python -m tests.training.sharded_child single BASE
        1 process x 8 devices: trains 2 steps on {'data': 2, 'model': 4} with FSDP (checkpoints
        in BASE/saved), copies them to BASE/data8, BASE/one and BASE/two, trains steps 3-4 (the
        reference losses), restores the step-2 copies onto {'data': 8} and onto 1 device and
        trains their steps 3-4; writes BASE/single.json and the weights of steps 2 and 4
        (BASE/w2.npz, BASE/w4.npz); then is killed (SIGKILL to itself) in the middle of
        writing its shard file of step 5.
    python -m tests.training.sharded_child multi BASE ADDRESS PROCESS_ID
        one of 2 processes x 4 devices: trains 2 steps from scratch on {'data': 2, 'model': 4}
        with FSDP (checkpoints in BASE/fresh), restores BASE/two (step 2) onto that mesh,
        checks its weights, trains steps 3-4 (each process writes its shards of the
        checkpoints), writes BASE/multi-ID.json; then process 0 is killed (SIGKILL) after both
        shard files of step 5 are written and before the commit record.
"""
import json
import os
import shutil
import signal
import sys

MESH = {'mesh_shape': {'data': 2, 'model': 4}, 'fsdp': True}


def make_loop(output_dir, shard_index=0, shard_count=1, **placement):
    from trax_sparse import training
    from tests.training import tiny
    stream = tiny.CountingStream(batch_size=8, shard_index=shard_index, shard_count=shard_count)
    task = training.TrainTask(stream, optimizer=training.Adam(),
                              lr_schedule=training.constant(tiny.LEARNING_RATE),
                              n_steps_per_checkpoint=1)
    return training.Loop(tiny.TinyLM(), task, output_dir=output_dir, random_seed=5,
                         progress_bar=False, **placement)


def losses(loop, n):
    return [r['loss'] for r in loop.history if r['split'] == 'train'][-n:]


def save_weights(path, loop):
    import numpy as np
    from trax_sparse import fastmath
    np.savez(path, *fastmath.tree_leaves(loop.weights))


def same_weights(loop, path):
    import numpy as np
    from trax_sparse import fastmath
    with np.load(path) as saved:
        expected = [saved[f'arr_{i}'] for i in range(len(saved.files))]
    got = fastmath.tree_leaves(loop.weights)
    return len(got) == len(expected) and all(
        a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, expected))


def kill_at(step, where):
    """SIGKILL this process during the save of `step`: in the middle of writing its shard
    file ('shard': after its first piece) or just before the commit record ('commit')."""
    from trax_sparse.training import checkpoint as ckpt
    from trax_sparse.training import checkpoint_shards as shards
    name = f'ckpt-{step:08d}'
    if where == 'commit':
        real_commit = ckpt.atomic_write_text

        def commit(path, text):
            if os.path.basename(path).startswith(name):
                os.kill(os.getpid(), signal.SIGKILL)
            real_commit(path, text)
        ckpt.atomic_write_text = commit
    else:
        real_write = shards.write_pieces

        def write(path, pieces):
            if os.path.basename(path).startswith(name):
                second = list(pieces)[1]
                pieces[second] = lambda: os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, pieces)
        shards.write_pieces = write


def single(base):
    loop = make_loop(f'{base}/saved', **MESH)
    loop.run(2)
    first = losses(loop, 2)
    save_weights(f'{base}/w2.npz', loop)
    for name in ('data8', 'one', 'two'):
        shutil.copytree(f'{base}/saved', f'{base}/{name}')
    loop.run(2)
    result = {'losses': first + losses(loop, 2)}
    save_weights(f'{base}/w4.npz', loop)
    for name, placement in (('data8', {'mesh_shape': {'data': 8}}), ('one', {'n_devices': 1})):
        restored = make_loop(f'{base}/{name}', **placement)
        result[name] = {'step': restored.step, 'n_devices': restored.n_devices,
                        'same_weights': same_weights(restored, f'{base}/w2.npz')}
        restored.run(2)
        result[name]['losses'] = losses(restored, 2)
    with open(f'{base}/single.json', 'w') as f:
        json.dump(result, f)
    kill_at(5, 'shard')
    loop.run(1)


def multi(base, address, process_id):
    os.environ.setdefault('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
    from trax_sparse import training
    training.initialize_distributed(address, 2, process_id)
    fresh = make_loop(f'{base}/fresh', process_id, 2, **MESH)
    fresh.run(2)
    loop = make_loop(f'{base}/two', process_id, 2, **MESH)
    result = {'step': loop.step, 'n_devices': loop.n_devices, 'fresh': losses(fresh, 2),
              'same_weights': same_weights(loop, f'{base}/w2.npz')}
    loop.run(2)
    result['losses'] = losses(loop, 2)
    with open(f'{base}/multi-{process_id}.json', 'w') as f:
        json.dump(result, f)
    if process_id == 0:
        kill_at(5, 'commit')
    loop.run(1)


if __name__ == '__main__':
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=' + (
        '8' if sys.argv[1] == 'single' else '4')
    if sys.argv[1] == 'single':
        single(sys.argv[2])
    else:
        multi(sys.argv[2], sys.argv[3], int(sys.argv[4]))
