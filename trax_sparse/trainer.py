"""Trains a gin-configured model: the `trax-sparse-train` command.

    python -m trax_sparse.trainer --config_file=gin/X.gin --config='train.steps=100' \\
        --output_dir=DIR

Parses the gin files and bindings (--config_file and --config repeat, applied in order),
then calls the gin-configured root `train` (trax_sparse.training.train) on DIR, which gets
config.gin (the operative config), metrics.jsonl, TensorBoard files and checkpoints. Run
the same command again and it resumes from DIR's newest valid checkpoint.
--debug runs without jit and with jax_debug_nans, and shows tracebacks (otherwise user
errors -- a bad config, a missing file or dataset, an unusable checkpoint dir, a failed
save -- end in one line and status 1). --coordinator_address, --num_processes and
--process_id join a multi-host run (jax.distributed.initialize): each process then reads
its shard of the data. SIGTERM / SIGINT stop after the current step with a checkpoint and
exit 0. --restart starts from step 0 when every checkpoint in DIR is unusable (they are
moved into DIR/checkpoints/corrupt/; without it the trainer refuses to start). At the end,
DIR/loss.png shows the loss curves (--noplot: not; `trax-sparse-plot DIR` redraws it).
"""
import importlib.util
import logging as std_logging
import os
import sys

import gin
from absl import app, flags, logging

from trax_sparse import fastmath, training
from trax_sparse.layers import LayerError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('config_file', [], 'Gin config file; repeat for several (in order).')
flags.DEFINE_multi_string('config', [], "Gin binding, e.g. --config='train.steps=100'; repeat "
                          'for several (applied after the files).')
flags.DEFINE_string('output_dir', None, 'Directory for checkpoints, metrics and config.gin; '
                    'training resumes when it holds a checkpoint.')
flags.DEFINE_enum('backend', 'jax', list(fastmath.BACKENDS), 'fastmath backend (training '
                  'needs jax: gradients).')
flags.DEFINE_bool('debug', False, 'Disable jit, turn on jax_debug_nans and show tracebacks.')
flags.DEFINE_bool('restart', False, 'When every checkpoint in output_dir is unusable, move '
                  'them into checkpoints/corrupt/ and train from step 0 (default: refuse).')
flags.DEFINE_bool('plot', True, 'At the end, draw the loss curves into output_dir/loss.png '
                  '(needs matplotlib).')
flags.DEFINE_integer('log_every', 100, 'Log a line with loss, speed and ETA every N steps '
                     '(0: only at evals and checkpoints).')
flags.DEFINE_string('data_dir', None, 'Where datasets live (as TFDS data_dir); default '
                    '$TRAX_SPARSE_DATA_DIR, else ~/.local/share/trax_sparse.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')

# Errors of configuration, data or numerics: reported in one message (--debug: traceback).
USER_ERRORS = (ValueError, TypeError, LayerError, training.CheckpointError,
               training.NonFiniteLossError, fastmath.BackendError, OSError, ImportError)


def fail(message: str) -> None:
    """Exits with status 1 after printing `message` on one line (no traceback: a user error)."""
    sys.exit(f"trax-sparse-train: error: {' '.join(message.split())}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None
        return False


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not FLAGS.output_dir:
        fail('--output_dir is required')
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.INFO)
        for noisy in ('jax', 'absl'):
            std_logging.getLogger(noisy).setLevel(std_logging.WARNING)
    if FLAGS.backend != 'jax':
        fail(f'--backend={FLAGS.backend} cannot train: gradients need the JAX backend '
             '(NumPy runs forward passes only, e.g. to decode from a checkpoint)')
    missing = [m for m in ('jax', 'optax') if not _installed(m)]
    if missing:
        fail(f"training needs {' and '.join(missing)} (not installed): "
             f"pip install 'trax_sparse[jax,train]'")
    try:
        _train()
    except USER_ERRORS as e:
        if FLAGS.debug:
            raise
        fail(f'{type(e).__name__}: {e} (run with --debug for the traceback)')


def _train() -> None:
    """Joins a multi-host run, parses the gin config and trains."""
    fastmath.set_backend(FLAGS.backend)
    if FLAGS.coordinator_address or FLAGS.num_processes:
        # CPU processes need gloo collectives (read when jax is imported; GPU/TPU ignore it).
        os.environ.setdefault('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
        training.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
    if FLAGS.debug:
        fastmath.backend().set_debug_options(disable_jit=True, debug_nans=True)
    if FLAGS.data_dir:
        from trax_sparse import data
        data.set_data_dir(FLAGS.data_dir)
    from trax_sparse import configurables  # registers everything with gin
    configurables.add_search_paths(FLAGS.config_file)
    try:
        gin.parse_config_files_and_bindings(FLAGS.config_file, FLAGS.config)
    except Exception as e:  # noqa: BLE001 - gin's message names the file and binding.
        if FLAGS.debug:
            raise
        fail(f'in the gin config: {e}')
    loop = configurables.train(output_dir=FLAGS.output_dir, restart=FLAGS.restart,
                               log_every=FLAGS.log_every or None, plot=FLAGS.plot,
                               operative_config=gin.operative_config_str)
    if loop.interrupted:
        logging.warning('%s: stopped at step %d with a checkpoint; run the same command to '
                        'resume', loop.interrupted, loop.step)


def console_main() -> None:
    """Entry point of the `trax-sparse-train` console script."""
    app.run(main)


if __name__ == '__main__':
    console_main()
