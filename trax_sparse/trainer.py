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
--process_id join a multi-host run (jax.distributed.initialize; every process gets the same
DIR, where each writes its shards of the checkpoints): each process reads its shard of the
data; when a process dies or stops answering for --peer_timeout seconds,
every other one stops with a line naming it and the last checkpoint (status 1). One trainer
per DIR: a second one refuses (DIR/trainer.lock names the holder). SIGTERM / SIGINT stop
after the current step with a checkpoint and exit 0 (before step 1: at once, exit 0). --restart starts from step 0 when every checkpoint in DIR is unusable (they are
moved into DIR/checkpoints/corrupt/; without it the trainer refuses to start). At the end,
DIR/loss.png shows the loss curves (--noplot: not; `trax-sparse-plot DIR` redraws it).
"""
import logging as std_logging
import os
import re
import sys

import gin
from absl import app, flags, logging

from trax_sparse import fastmath, training
from trax_sparse.data import extras
from trax_sparse.layers import LayerError
from trax_sparse.training import cli, interrupt, peers

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
flags.DEFINE_integer('peer_timeout', 60, 'Multi-host: stop when another process has died or '
                     'sent nothing for this many seconds (5..90; jax aborts at 100).')
PROG = 'trax-sparse-train'
SUMMARY = 'train a gin-configured model; rerun the same command to resume.'
EXAMPLE = ("trax-sparse-train --config_file=scaling_transformer_lm_tiny.gin "
           "--config='train.steps=600' --output_dir=runs/sparse")

# Errors of configuration, data or numerics: reported in one message (--debug: traceback).
USER_ERRORS = (ValueError, TypeError, LayerError, training.CheckpointError,
               training.NonFiniteLossError, fastmath.BackendError, OSError, ImportError)


def fail(message: str) -> None:
    """Exits with status 1 after printing `message` on one line (no traceback: a user error)."""
    sys.exit(f"trax-sparse-train: error: {' '.join(message.split())}")


def missing_extras_message() -> str | None:
    """The one-line error when jax or optax is missing; it names every missing extra
    (jax, and data / train when they are missing too), so one pip command does it all."""
    needed = extras.missing_modules('jax')
    if not needed:
        return None
    names = ['jax'] + [e for e in ('data', 'train') if extras.missing_modules(e)]
    others = [m for e in names[1:] for m in extras.missing_modules(e)]
    also = f" (and the default configs' data and plots need {', '.join(others)})" \
        if others else ''
    return (f"training needs {' and '.join(needed)} (not installed){also}: "
            f"{extras.install_command(names)}")


_GIN_CALL = re.compile(r"\s*In call to configurable '([^']+)' \(<[^>]*>\)")


def short_gin_message(message: str) -> str:
    """`message` without gin's "In call to configurable 'X' (<function X at 0x..>)" lines;
    the innermost binding is named instead (not the root `train`, which every error has).

        >>> short_gin_message("bad value In call to configurable 'TinyLM' (<function TinyLM "
        ...                   "at 0x7f>) In call to configurable 'train' (<function train>)")
        'bad value (in TinyLM)'
    """
    names = _GIN_CALL.findall(message)
    text = _GIN_CALL.sub('', message).strip()
    if names and names[0] != 'train':
        text += f' (in {names[0]})'
    return text


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not FLAGS.output_dir:
        fail('--output_dir is required')
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.INFO)
        for noisy in ('jax', 'absl'):
            std_logging.getLogger(noisy).setLevel(std_logging.WARNING)
    with cli.quiet_warnings():
        _checked_main()


def _checked_main() -> None:
    if FLAGS.backend != 'jax':
        fail(f'--backend={FLAGS.backend} cannot train: gradients need the JAX backend '
             '(NumPy runs forward passes only, e.g. to decode from a checkpoint)')
    missing = missing_extras_message()
    if missing:
        fail(missing)
    if not 5 <= FLAGS.peer_timeout <= 90:
        fail(f'--peer_timeout={FLAGS.peer_timeout}: expected seconds in [5, 90] (jax.distributed '
             'gives up on a silent process after 100 s)')
    try:
        with interrupt.StopBeforeTraining():
            _train()
    except interrupt.SignalBeforeTraining as e:
        if e.runs_started:
            logging.warning('%s received after training: stopped', e.signal_name)
        else:
            logging.warning('%s received before step 1: no step was done, nothing was saved; '
                            'run the same command to start', e.signal_name)
    except USER_ERRORS as e:
        if FLAGS.debug:
            raise
        fail(f'{type(e).__name__}: {short_gin_message(str(e))} (run with --debug for the '
             'traceback)')


def _train() -> None:
    """Joins a multi-host run, parses the gin config and trains."""
    fastmath.set_backend(FLAGS.backend)
    watch = None
    if FLAGS.coordinator_address or FLAGS.num_processes:
        # CPU processes need gloo collectives (read when jax is imported; GPU/TPU ignore it).
        os.environ.setdefault('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
        training.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
        if FLAGS.coordinator_address and (FLAGS.num_processes or 1) > 1:
            watch = peers.PeerWatch(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id or 0, FLAGS.peer_timeout, _lost_peer)
            watch.start()
    try:
        _train_configured()
    except Exception as e:  # noqa: BLE001 - a collective failed on a lost peer: the watch says it
        expected = isinstance(e, USER_ERRORS + (interrupt.SignalBeforeTraining,))
        if watch is not None and not expected and watch.wait_for_loss(FLAGS.peer_timeout + 5):
            return
        raise
    finally:
        if watch is not None:
            watch.stop()


def _lost_peer(process: int, reason: str) -> None:
    """Ends this process of a multi-host run after a peer was lost: one line, status 1, at
    once (jax.distributed's exit handlers would wait for the lost peer)."""
    sys.stderr.write(f'{PROG}: error: lost process {process} of {FLAGS.num_processes} '
                     f'({reason}); stopping this process ({FLAGS.process_id}); '
                     f'{peers.last_checkpoint_text()}. Restart every process with the same '
                     f'command to resume\n')
    sys.stderr.flush()
    std_logging.shutdown()
    os._exit(1)


def _train_configured() -> None:
    """Parses the gin config and trains."""
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
        fail(f'in the gin config: {short_gin_message(str(e))}')
    loop = configurables.train(output_dir=FLAGS.output_dir, restart=FLAGS.restart,
                               log_every=FLAGS.log_every or None, plot=FLAGS.plot,
                               operative_config=gin.operative_config_str)
    if loop.interrupted:
        logging.warning('%s: stopped at step %d with a checkpoint; run the same command to '
                        'resume', loop.interrupted, loop.step)


def help_text() -> str:
    """The text of --help: an example and this binary's own flags, one line each."""
    return cli.short_help(PROG, SUMMARY, EXAMPLE, FLAGS,
                          cli.module_flags(FLAGS, __name__, 'trax_sparse.trainer'))


def console_main() -> None:
    """Entry point of the `trax-sparse-train` console script."""
    if cli.wants_help(sys.argv):
        cli.print_help_and_exit(help_text())
    app.run(main)


if __name__ == '__main__':
    console_main()
