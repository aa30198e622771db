"""kill -9 at random moments of a run that checkpoints every step: every checkpoint that loads
afterwards is exactly the one an uninterrupted run writes, and resuming stays bit-exact."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from trax_sparse import fastmath
from trax_sparse import training
from trax_sparse.training import checkpoint as ckpt
from tests.training import tiny
from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
CHILD = textwrap.dedent('''
    import sys
    from tests.training.test_kill_during_save import make_loop
    loop = make_loop(sys.argv[1])
    loop.run(int(sys.argv[2]) - loop.step)
''')


def make_loop(output_dir):
    """The run under test: a checkpoint after every step, all of them kept."""
    task = training.TrainTask(tiny.CountingStream(), optimizer=training.Adam(),
                              lr_schedule=training.constant(tiny.LEARNING_RATE),
                              n_steps_per_checkpoint=1)
    return training.Loop(tiny.TinyLM(), task, output_dir=str(output_dir), random_seed=11,
                         keep_checkpoints=10 * STEPS, progress_bar=False)


def _arrays(checkpoint):
    return fastmath.tree_leaves((checkpoint.weights, checkpoint.state,
                                 checkpoint.opt_state_leaves))


def _check_loadable_ones_are_exact(directory, reference):
    loaded = 0
    for step, path in ckpt.list_checkpoints(directory):
        try:
            got = ckpt.read_checkpoint(path)
        except ckpt.CheckpointError:
            continue  # unusable: the Loop moves it aside, never loads it
        loaded += 1
        for a, b in zip(_arrays(got), reference[step]):
            np.testing.assert_array_equal(a, b)
    return loaded


def test_kill_9_during_checkpoint_writes_never_leaves_a_loadable_corrupt_checkpoint(tmp_path):
    straight = make_loop(tmp_path / 'straight')
    straight.run(STEPS)
    straight.close()
    reference = {step: _arrays(ckpt.read_checkpoint(path))
                 for step, path in ckpt.list_checkpoints(straight.checkpoint_dir)}
    victim_dir = tmp_path / 'victim' / 'checkpoints'
    rng = random.Random(0)
    for _ in range(3):
        before = len(ckpt.list_checkpoints(str(victim_dir)))
        child = subprocess.Popen([sys.executable, '-c', CHILD, str(tmp_path / 'victim'),
                                  str(STEPS)], cwd=ROOT, env=subprocess_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(ckpt.list_checkpoints(str(victim_dir))) <= before and \
                child.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the following steps and saves
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate()
        assert child.returncode in (-signal.SIGKILL, 0), err.decode()[-2000:]
        assert _check_loadable_ones_are_exact(str(victim_dir), reference) > before
    resumed = make_loop(tmp_path / 'victim')
    assert 0 < resumed.step <= STEPS
    resumed.run(STEPS - resumed.step)
    for a, b in zip(fastmath.tree_leaves(resumed.weights),
                    fastmath.tree_leaves(straight.weights)):
        np.testing.assert_array_equal(a, b)
