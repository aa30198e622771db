"""The trainer binary's user errors end in one line (traceback only under --debug), SIGTERM
exits 0 with a checkpoint, --restart, --log_every. Runs main() in this process (fast)."""
import errno
import json
import logging
import os
import subprocess
import sys

import gin
import pytest
from absl import flags

from trax_sparse import fastmath, trainer
from trax_sparse import training
from trax_sparse.training import checkpoint as ckpt
from tests.training import tiny
from tests.training.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
GIN = f"""
import tests.training.gin_tiny

train.model = @TinyLM
train.inputs = @CountingStream
train.optimizer = @Adam
train.lr_schedule = @training.constant
training.constant.value = {tiny.LEARNING_RATE}
train.steps = 4
train.checkpoint_every = 2
"""


def _trainer(tmp_path, *args, gin_text=GIN):
    """(exit status, the error message or '') of the trainer run in this process."""
    config = tmp_path / 'tiny.gin'
    config.write_text(gin_text)
    argv = ['trax-sparse-train', f'--config_file={config}', *args]
    backend = fastmath.backend_name()
    FLAGS.unparse_flags()
    FLAGS(argv)
    try:
        trainer.main(argv[:1])
        return 0, ''
    except SystemExit as e:
        return (1, e.code) if isinstance(e.code, str) else (e.code, '')
    finally:
        gin.clear_config()
        FLAGS.unparse_flags()
        fastmath.set_backend(backend)
        with fastmath.use_backend('jax'):  # --debug set them for the whole process
            fastmath.backend().set_debug_options(disable_jit=False, debug_nans=False)


def _one_line_error(status, message, *expected):
    assert status == 1, message
    assert message.startswith('trax-sparse-train: error: ') and '\n' not in message, message
    for text in expected:
        assert text in message, message


def test_unprepared_tfds_dataset_is_one_line(tmp_path):
    pytest.importorskip('tensorflow_datasets')
    gin_text = GIN + f"""
train.inputs = @train/tfds_lm_stream
train/tfds_lm_stream.name = 'shakespeare_works'
train/tfds_lm_stream.split = 'train'
train/tfds_lm_stream.tokenizer = @ByteTokenizer()
train/tfds_lm_stream.seq_len = 8
train/tfds_lm_stream.batch_size = 2
train/tfds_lm_stream.data_dir = '{tmp_path / "no_data_here"}'
"""
    status, message = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}',
                               gin_text=gin_text)
    _one_line_error(status, message, 'FileNotFoundError', "'shakespeare_works' is not prepared",
                    'run with --debug')


def test_missing_text_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    gin_text = GIN + f"""
train.inputs = @LMStream
LMStream.examples = @text_file_examples()
text_file_examples.path = '{tmp_path / "missing.txt"}'
LMStream.tokenizer = @ByteTokenizer()
LMStream.seq_len = 8
LMStream.batch_size = 2
"""
    status, message = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}',
                               gin_text=gin_text)
    _one_line_error(status, message, 'missing.txt', 'does not exist')
    with pytest.raises(FileNotFoundError, match='missing.txt'):
        _trainer(tmp_path, f'--output_dir={tmp_path / "out"}', '--debug', gin_text=gin_text)


def test_save_time_oserror_is_one_line(tmp_path, monkeypatch):
    def disk_full(f, **arrays):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(ckpt.np, 'savez', disk_full)
    status, message = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}')
    _one_line_error(status, message, 'CheckpointWriteError', 'could not write the checkpoint of '
                    'step 2', 'No space left on device')


def test_unknown_gin_name_is_one_line(tmp_path):
    status, message = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}',
                               '--config=NoSuchThing.n_units = 3')
    _one_line_error(status, message, "No configurable matching 'NoSuchThing'")


def test_sigterm_exits_0_with_a_checkpoint_then_log_every_and_restart(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='trax_sparse.training')
    out = tmp_path / 'out'
    status, _ = _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 10',
                         '--config=CountingStream.signal_at = 2', '--log_every=1')
    assert status == 0
    assert json.load(open(training.load_latest(str(out / 'checkpoints')).path))['step'] == 3
    lines = [r.getMessage() for r in caplog.records if 'ETA' in r.getMessage()]
    assert lines and lines[-1].startswith('step 3/10, loss '), lines  # starts at step 1
    assert 'tokens/s' in lines[-1]
    caplog.clear()
    for _, path in ckpt.list_checkpoints(str(out / 'checkpoints')):  # steps 2 and 3
        with open(path, 'a') as f:
            f.write('garbage')
    status, message = _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 10')
    _one_line_error(status, message, 'is unusable', '--restart')
    status, _ = _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 4',
                         '--restart')
    assert status == 0 and training.load_latest(str(out / 'checkpoints')).step == 4
    assert (out / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_missing_jax_is_one_line(tmp_path):
    script = ("import sys; sys.modules['jax'] = None; sys.modules['optax'] = None; "
              "sys.argv = ['trax-sparse-train', '--output_dir=" + str(tmp_path) + "']; "
              'from trax_sparse import trainer; trainer.console_main()')
    result = subprocess.run([sys.executable, '-c', script], env=subprocess_env(),
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "trax-sparse-train: error: training needs jax and optax (not installed): pip install "
        "-e '.[jax]'"), result.stderr       # a checkout: the editable form, from its root
