"""TFDS datasets as random-access example sequences, through `tfds.data_source` (no TensorFlow).

Nothing is ever downloaded here: `tfds.builder(name, data_dir=...).is_prepared()` is checked
first and a dataset that is not there fails at once with a message saying how to prepare it.
The examples are dicts of numpy values (text features as UTF-8 bytes); feed them to the
pipelines with the feature keys of `DEFAULT_FEATURE_KEYS` (or your own).

Example (an arXiv summarization stream, once the dataset is prepared in data_dir):
    >>> from trax_sparse import data
    >>> data.is_prepared('scientific_papers/arxiv', data_dir='/tmp/no_tfds_here')
    False
    >>> stream = data.tfds_seq2seq_stream(                              # doctest: +SKIP
    ...     'scientific_papers/arxiv', 'train', data.ByteTokenizer(), max_input_len=16384,
    ...     max_target_len=1024, batch_size=1, data_dir='~/tensorflow_datasets')
"""
import importlib
import os
from pathlib import Path
from typing import Any

from trax_sparse.data import shakespeare
from trax_sparse.data.corpora import import_tfds, resolve_data_dir
from trax_sparse.data.pipelines import LMStream, Seq2SeqStream

# Feature keys per dataset (name before '/'): a 1-tuple for LM text, (input, target) for seq2seq.
DEFAULT_FEATURE_KEYS = {
    'c4': ('text',),
    'lm1b': ('text',),
    'scientific_papers': ('article', 'abstract'),
    shakespeare.DATASET_NAME: ('text',),
}
# TFDS 4.9 registers these legacy catalogue packages only when imported (c4 lives in `text`).
_LEGACY_CATALOGUE_PACKAGES = ('text', 'summarization', 'translate', 'question_answering',
                              'structured')


def default_feature_keys(name: str) -> tuple[str, ...]:
    """The feature keys used for dataset `name` ('c4/en' -> ('text',))."""
    base = name.split(':')[-1].split('/')[0]
    if base not in DEFAULT_FEATURE_KEYS:
        raise ValueError(f'no default feature keys for TFDS dataset {name!r}; pass them '
                         f'explicitly (known defaults: {sorted(DEFAULT_FEATURE_KEYS)})')
    return DEFAULT_FEATURE_KEYS[base]


def _how_to_prepare(name: str, data_dir: Path) -> str:
    if name.split('/')[0] == shakespeare.DATASET_NAME:
        return f'run `{shakespeare.PREPARE_COMMAND} --data_dir={data_dir}`'
    beam = ' (c4 also needs apache_beam)' if name.startswith('c4') else ''
    return ('prepare it on a machine with network access, in the array_record format, e.g. '
            f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{data_dir}', file_format='array_record').download_and_prepare()\"`"
            f'{beam}, then copy it there or point TRAX_SPARSE_DATA_DIR / data_dir at it')


def _builder(name: str, data_dir: Path) -> Any:
    """tfds.builder(name), or a ValueError when TFDS knows no such dataset."""
    tfds = import_tfds()
    if name.split('/')[0] == shakespeare.DATASET_NAME:
        from trax_sparse.data import shakespeare_builder  # registers the builder  # noqa: F401
    try:
        return tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        pass
    for package in _LEGACY_CATALOGUE_PACKAGES:
        try:
            importlib.import_module(f'tensorflow_datasets.{package}')
        except ImportError:
            continue
    try:
        return tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f'unknown TFDS dataset {name!r}: it is not in the TFDS catalogue and '
                         f'not prepared in data_dir {str(data_dir)!r}; expected a catalogue name '
                         f"such as 'lm1b', 'c4/en', 'scientific_papers/arxiv' or "
                         f'{shakespeare.DATASET_NAME!r}') from None


def is_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether TFDS dataset `name` is prepared in `data_dir` (instant; never downloads)."""
    return bool(_builder(name, resolve_data_dir(data_dir)).is_prepared())


def tfds_examples(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Any:
    """Random-access examples (len, [i]) of a prepared TFDS dataset split, read without TF.

    Raises FileNotFoundError at once (saying how to prepare it) when the dataset is not
    prepared in `data_dir`, ValueError for an unknown dataset or split, or a dataset
    prepared in a format `tfds.data_source` cannot read.
    """
    tfds = import_tfds()
    data_dir = resolve_data_dir(data_dir)
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f'TFDS dataset {name!r} is not prepared in data_dir {str(data_dir)!r} (looked for '
            f'{builder.data_dir}); trax_sparse never downloads at run time: '
            f'{_how_to_prepare(name, data_dir)}')
    splits = list(builder.info.splits.keys())
    if split not in splits and split.split('[')[0] not in splits:
        raise ValueError(f'TFDS dataset {name!r} has no split {split!r}; it has {splits}')
    file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
    if file_format != 'array_record':
        raise ValueError(f'TFDS dataset {name!r} in {str(data_dir)!r} is stored as {file_format}; '
                         f'reading it without TensorFlow needs array_record (convert it with '
                         f'`tfds convert_format` or prepare it with file_format=array_record)')
    return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)


def load_shakespeare(split: str = 'train', data_dir: str | os.PathLike | None = None) -> Any:
    """The examples ({'text', 'work'}) of the default corpus; see `tfds_examples`."""
    return tfds_examples(shakespeare.DATASET_NAME, split, data_dir)


def tfds_lm_stream(name: str, split: str, tokenizer: Any, seq_len: int, batch_size: int, *,
                   data_dir: str | os.PathLike | None = None, text_key: str | None = None,
                   **stream_options: Any) -> LMStream:
    """LMStream over a prepared TFDS dataset ('c4/en', 'lm1b', 'shakespeare_works', ...).

    text_key defaults to the dataset's first DEFAULT_FEATURE_KEYS entry; `stream_options`
    go to LMStream (seed, repeat, add_eos, shard_index, shard_count).
    """
    text_key = text_key or default_feature_keys(name)[0]
    return LMStream(tfds_examples(name, split, data_dir), tokenizer, seq_len, batch_size,
                    text_key=text_key, **stream_options)


def tfds_seq2seq_stream(name: str, split: str, tokenizer: Any, *, max_input_len: int,
                        max_target_len: int, data_dir: str | os.PathLike | None = None,
                        input_key: str | None = None, target_key: str | None = None,
                        **stream_options: Any) -> Seq2SeqStream:
    """Seq2SeqStream over a prepared TFDS dataset (default keys: arxiv 'article'/'abstract')."""
    if input_key is None or target_key is None:
        keys = default_feature_keys(name)
        if len(keys) != 2:
            raise ValueError(f'TFDS dataset {name!r} has no default (input, target) feature keys; '
                             f'pass input_key and target_key')
        input_key, target_key = input_key or keys[0], target_key or keys[1]
    return Seq2SeqStream(tfds_examples(name, split, data_dir), tokenizer,
                         max_input_len=max_input_len, max_target_len=max_target_len,
                         input_key=input_key, target_key=target_key, **stream_options)
