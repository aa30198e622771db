"""Issue 23's table, in-process where no binary start is needed: --help, step values, SIGTERM
before step 1, the output-dir lock, a changed config on resume, gin's short errors, the
labelled loss, quiet warnings and the extras hints."""
import io
import logging
import os
import socket
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from trax_sparse import decode, trainer
from trax_sparse.data import extras
from trax_sparse import training
from trax_sparse.training import cli, reporter
from trax_sparse.training.output_lock import LOCK_FILE, OutputLock
from tests.training.conftest import subprocess_env
from tests.training.test_trainer_errors import _one_line_error, _trainer


@pytest.mark.parametrize('module', [trainer, decode])
def test_help_lists_own_flags_one_line_each_and_an_example(module, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [module.PROG, '--help'])
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.console_main()
    assert exit_info.value.code == 0
    lines = out.getvalue().splitlines()
    assert lines[2:4] == ['example:', f'  {module.PROG} --' + lines[3].split(' --', 1)[1]]
    own = cli.module_flags(module.FLAGS, module.__name__)
    assert len(own) >= 9
    for flag in own:
        hits = [line for line in lines if line.split()[:1] in (
            [f'--{flag.name}'], [f'--[no]{flag.name}']) or line.lstrip().startswith(
            f'--{flag.name}=')]
        assert len(hits) == 1 and flag.help.split()[0] in hits[0], (flag.name, hits)
    assert not any('absl' in line and '--' in line for line in lines[5:-1])  # not absl's own


@pytest.mark.parametrize('value', ['2.5', '1e23', '100000000000000000000000'])
def test_steps_must_be_a_whole_number_in_range(tmp_path, value):
    status, message = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}',
                               f'--config=train.steps = {value}')
    _one_line_error(status, message, 'train.steps = ', 'expected a whole number')
    assert not (tmp_path / 'out').exists()


def test_steps_0_says_nothing_will_be_trained(tmp_path, caplog):
    status, _ = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}', '--config=train.steps = 0')
    assert status == 0
    assert 'train.steps = 0: nothing will be trained' in caplog.text
    assert 'already holds' not in caplog.text
    assert not os.listdir(tmp_path / 'out' / 'checkpoints')


def test_eta_of_a_huge_run_reads_in_days_or_years():
    assert reporter.format_duration(5 * 86400 + 3600) == '5d01h'
    assert reporter.format_duration(4.9e21 * 3600) == '> 100 years'


def test_sigterm_before_step_1_exits_0_saying_no_step_was_done(tmp_path, caplog):
    # The stream draws batch 0 while the Loop is built (before step 1) and SIGTERMs itself.
    status, _ = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}',
                         '--config=CountingStream.signal_at = 0')
    assert status == 0
    assert 'SIGTERM received before step 1: no step was done' in caplog.text
    assert not training.checkpoint.list_checkpoints(str(tmp_path / 'out' / 'checkpoints'))
    assert (tmp_path / 'out' / LOCK_FILE).read_text() == ''    # released


def test_second_trainer_on_a_locked_dir_refuses_naming_pid_and_host(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    with OutputLock(str(out)):   # as a running trainer holds it
        status, message = _trainer(tmp_path, f'--output_dir={out}')
    _one_line_error(status, message, f'is in use by the trainer with pid {os.getpid()} on host '
                    f'{socket.gethostname()}')
    assert not (out / 'checkpoints').exists()


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_note(tmp_path, caplog):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True).stdout.strip()
    out = tmp_path / 'out'
    out.mkdir()
    (out / LOCK_FILE).write_text(f'{dead} {socket.gethostname()}\n')
    status, _ = _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 1')
    assert status == 0
    assert (f'taking over the stale lock {out / LOCK_FILE} of pid {dead} on host '
            f'{socket.gethostname()} (no longer running)') in caplog.text


def test_changed_config_on_resume_is_logged_and_kept_shape_change_refuses(tmp_path, caplog):
    out = tmp_path / 'out'
    assert _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 2')[0] == 0
    first = (out / 'config.gin').read_text()
    caplog.clear()
    status, _ = _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 3',
                         '--config=training.constant.value = 0.01')
    assert status == 0
    # (train.steps is not reported: more steps extend a run)
    assert ('resuming at step 2 with a changed config (training.constant.value: 0.05 -> '
            f'0.01); the previous one is kept in '
            f'{out / "config.2.gin"}') in caplog.text
    assert (out / 'config.2.gin').read_text() == first
    assert 'constant.value = 0.01' in (out / 'config.gin').read_text()
    status, message = _trainer(tmp_path, f'--output_dir={out}', '--config=train.steps = 4',
                               '--config=TinyLM.d_model = 16')
    _one_line_error(status, message, 'CheckpointError', 'weights')


def test_gin_errors_name_the_binding_not_the_function_object(tmp_path):
    status, message = _trainer(tmp_path, f'--output_dir={tmp_path / "out"}',
                               "--config=TinyLM.d_model = 'x'")
    _one_line_error(status, message, "invalid literal for int() with base 10: 'x' (in TinyLM)")
    assert 'In call to configurable' not in message and '0x' not in message


def test_progress_bar_and_log_line_show_the_same_labelled_loss(caplog, monkeypatch):
    shown = []
    monkeypatch.setattr(reporter.ProgressBar, 'update', lambda self, text=None: shown.append(text))
    caplog.set_level(logging.INFO, logger='trax_sparse.training')
    r = reporter.Reporter(None, log_every=2, progress_bar=False)
    r.start_run(0, 4)
    for step, loss in enumerate([4.0, 2.0, 3.0, 1.0], 1):
        r.step_done(step, {'loss': loss}, 8)
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith('step')]
    assert shown[-1] == 'loss (mean of last 2) 2.0000'
    assert lines[-1].startswith('step 4/4, loss (mean of last 2) 2.0000')
    assert shown[1] in lines[0]


def test_quiet_warnings_hides_the_backend_probe_and_repeats():
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    handler = Collect()
    logging.getLogger().addHandler(handler)
    try:
        with cli.quiet_warnings():
            logging.getLogger('jax._src.xla_bridge').warning(
                "Unable to initialize backend 'tpu': UNIMPLEMENTED")
            for _ in range(2):
                logging.getLogger('trax_sparse.training').warning('checkpoint X is unusable')
        logging.getLogger('trax_sparse.training').warning('checkpoint X is unusable')
    finally:
        logging.getLogger().removeHandler(handler)
    assert records == ['checkpoint X is unusable'] * 2    # once inside, and again after


def test_missing_jax_names_every_missing_extra_in_one_command(monkeypatch):
    monkeypatch.setattr(extras, 'installed', lambda m: m not in ('jax', 'tensorflow_datasets'))
    assert trainer.missing_extras_message() == (
        "training needs jax (not installed) (and the default configs' data and plots need "
        f"tensorflow_datasets): pip install -e '{_checkout_target()}[jax,data]'")
    assert extras.install_command(['data', 'jax'], checkout=None) == \
        "pip install 'trax_sparse[jax,data]'"


def _checkout_target():
    root = extras.checkout_root()
    return '.' if os.path.abspath(os.getcwd()) == root else root


def test_prepare_without_the_data_extra_is_one_line_with_a_working_hint(tmp_path):
    script = ("import sys; sys.modules['tensorflow_datasets'] = None; "
              'from trax_sparse.data import prepare; '
              f"sys.exit(prepare.main(['--data_dir={tmp_path}']))")
    result = subprocess.run([sys.executable, '-c', script], env=subprocess_env(),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'error: preparing the corpus needs tensorflow_datasets (not installed): '
        f"pip install -e '{extras.checkout_root()}[data]'")
