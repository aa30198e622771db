"""Trains a gin-configured model: the `trax-sparse-train` command.

    python -m trax_sparse.trainer --config_file=gin/X.gin --config='train.steps=100' \\
        --output_dir=DIR

Parses the gin files and bindings (--config_file and --config repeat, applied in order),
then calls the gin-configured root `train` (trax_sparse.training.train) on DIR, which gets
config.gin (the operative config), metrics.jsonl, TensorBoard files and checkpoints. Run
the same command again and it resumes from DIR's newest valid checkpoint.
--debug runs without jit and with jax_debug_nans; --coordinator_address, --num_processes
and --process_id join a multi-host run (jax.distributed.initialize).
"""
import logging as std_logging
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
flags.DEFINE_bool('debug', False, 'Disable jit and turn on jax_debug_nans.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')

# Errors of configuration, data or numerics: reported in one message (--debug: traceback).
USER_ERRORS = (ValueError, TypeError, LayerError, training.CheckpointError,
               training.NonFiniteLossError, fastmath.BackendError)


def fail(message: str) -> None:
    """Exits with status 1 after printing `message` (no traceback: a usage error)."""
    sys.exit(f'trax-sparse-train: error: {message}')


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not FLAGS.output_dir:
        fail('--output_dir is required')
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.INFO)
        for noisy in ('jax', 'absl'):
            std_logging.getLogger(noisy).setLevel(std_logging.WARNING)
    try:
        output_dir = training.prepare_output_dir(FLAGS.output_dir)
    except training.OutputDirError as e:
        fail(str(e))
    if FLAGS.backend != 'jax':
        fail(f'--backend={FLAGS.backend} cannot train: gradients need the JAX backend '
             '(NumPy runs forward passes only, e.g. to decode from a checkpoint)')
    fastmath.set_backend(FLAGS.backend)
    if FLAGS.coordinator_address or FLAGS.num_processes:
        training.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
    if FLAGS.debug:
        fastmath.backend().set_debug_options(disable_jit=True, debug_nans=True)

    from trax_sparse import configurables  # registers everything with gin
    configurables.add_search_paths(FLAGS.config_file)
    try:
        gin.parse_config_files_and_bindings(FLAGS.config_file, FLAGS.config)
    except Exception as e:  # noqa: BLE001 - gin's message names the file and binding.
        fail(f'in the gin config: {e}')
    try:
        configurables.train(output_dir=output_dir, operative_config=gin.operative_config_str)
    except USER_ERRORS as e:
        if FLAGS.debug:
            raise
        fail(f'{type(e).__name__}: {e}\n(run with --debug for the traceback)')


def console_main() -> None:
    """Entry point of the `trax-sparse-train` console script."""
    app.run(main)


if __name__ == '__main__':
    console_main()
