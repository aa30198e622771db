"""kill -9 at random moments of checkpoint writes: no checkpoint that loads afterwards differs
from what an uninterrupted run wrote, and a Loop resumed from the survivors is bit-exact.

The child writes, with the library's writer (checkpoint.save_checkpoint, as the Loop does),
the checkpoints of a reference Loop run, one per step, and is killed at a random moment; it
needs no jax, so many kills fit in a few seconds."""
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np

from trax_sparse import fastmath
from trax_sparse import training
from trax_sparse.training import checkpoint as ckpt
from tests.training import tiny
from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 30
ENTRIES = ('format', 'format_version', 'step', 'arrays', 'trees', 'leaves',
           ckpt.METADATA_SHA256)
WRITER = textwrap.dedent(f'''
    import sys
    from trax_sparse.training import checkpoint as ckpt
    source, target = sys.argv[1:]
    done = max([s for s, _ in ckpt.list_checkpoints(target)], default=0)
    print('ready', flush=True)
    while True:  # rewrites the newest steps again and again until killed
        for step, path in ckpt.list_checkpoints(source):
            if done - 3 < step <= {STEPS // 2}:  # the resumed Loop trains the rest
                c = ckpt.read_checkpoint(path)
                extra = {{k: v for k, v in c.metadata.items() if k not in {ENTRIES!r}}}
                ckpt.save_checkpoint(target, step, c.weights, c.state, c.opt_state_leaves,
                                     c.metadata['trees']['opt_state']['treedef'], extra)
        done = {STEPS // 2}
''')


def make_loop(output_dir):
    task = training.TrainTask(tiny.CountingStream(), optimizer=training.Adam(),
                              lr_schedule=training.constant(tiny.LEARNING_RATE),
                              n_steps_per_checkpoint=1)
    return training.Loop(tiny.TinyLM(), task, output_dir=str(output_dir), random_seed=11,
                         keep_checkpoints=10 * STEPS, progress_bar=False)


def _arrays(checkpoint):
    return fastmath.tree_leaves((checkpoint.weights, checkpoint.state,
                                 checkpoint.opt_state_leaves))


def _loadable_ones_are_exact(directory, reference):
    steps = []
    for step, path in ckpt.list_checkpoints(directory):
        try:
            got = ckpt.read_checkpoint(path)
        except ckpt.CheckpointError:
            continue  # unusable: a Loop moves it aside, never loads it
        assert {k: v for k, v in got.metadata.items() if k not in ENTRIES} == \
            {k: v for k, v in reference[step].metadata.items() if k not in ENTRIES}
        for a, b in zip(_arrays(got), _arrays(reference[step])):
            np.testing.assert_array_equal(a, b)
        steps.append(step)
    return steps


def test_kill_9_during_checkpoint_writes_never_leaves_a_loadable_corrupt_checkpoint(tmp_path):
    straight = make_loop(tmp_path / 'straight')
    straight.run(STEPS)
    straight.close()
    reference = {step: ckpt.read_checkpoint(path)
                 for step, path in ckpt.list_checkpoints(straight.checkpoint_dir)}
    victim = tmp_path / 'victim' / 'checkpoints'
    victim.mkdir(parents=True)
    rng = random.Random(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, '-c', WRITER, straight.checkpoint_dir,
                                  str(victim)], cwd=ROOT, env=subprocess_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == 'ready\n', child.stderr.read()
        try:
            child.wait(timeout=rng.uniform(0.05, 0.4))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        _, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err[-2000:]
        assert _loadable_ones_are_exact(str(victim), reference)
    resumed = make_loop(tmp_path / 'victim')
    assert 0 < resumed.step <= STEPS // 2
    resumed.run(STEPS - resumed.step)
    for a, b in zip(fastmath.tree_leaves(resumed.weights),
                    fastmath.tree_leaves(straight.weights)):
        np.testing.assert_array_equal(a, b)
