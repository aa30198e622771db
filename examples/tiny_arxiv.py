"""`tiny_arxiv`: a small generated dataset in TFDS format with the features of arXiv summarization.

TFDS `scientific_papers/arxiv` has the text features `article`, `abstract` and
`section_names`; this builder writes generated papers with the same features (array_record,
readable without TensorFlow), so `examples/summarize.py` can be run and tested end to end
on a machine where the real dataset is not prepared. The abstract of each paper is its
first sentence (a lead-1 summary: learnable by a small model).

    >>> import tempfile
    >>> data_dir = prepare(tempfile.mkdtemp(), n_train=8)                 # doctest: +SKIP
    >>> from trax_sparse import data
    >>> data.tfds_examples('tiny_arxiv', 'test', data_dir)[0]['abstract']  # doctest: +SKIP
"""
import os

import numpy as np
import tensorflow_datasets as tfds

NAME = 'tiny_arxiv'
SUBJECTS = ['we', 'this paper', 'our method', 'the model', 'this work']
VERBS = ['studies', 'improves', 'measures', 'predicts', 'explains', 'bounds']
ADJECTIVES = ['sparse', 'dense', 'long', 'fast', 'reversible', 'random', 'local']
NOUNS = ['attention', 'networks', 'memory', 'decoding', 'layers', 'spectra', 'graphs']
SECTIONS = ['introduction', 'method', 'results', 'conclusion']


def sentence(rng: np.random.Generator) -> str:
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    return (f'{pick(SUBJECTS)} {pick(VERBS)} {pick(ADJECTIVES)} {pick(NOUNS)} of '
            f'{pick(ADJECTIVES)} {pick(NOUNS)} .')


def paper(rng: np.random.Generator) -> dict:
    """{'article', 'abstract', 'section_names'}: 4-8 sentences; the abstract is the first."""
    sentences = [sentence(rng) for _ in range(rng.integers(4, 9))]
    return {'article': ' '.join(sentences), 'abstract': sentences[0],
            'section_names': '\n'.join(SECTIONS)}


class TinyArxiv(tfds.core.GeneratorBasedBuilder):
    """Generated papers with the features of scientific_papers/arxiv (see module doc)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Generated; abstract = first sentence.'}
    SIZES = {'train': 256, 'validation': 16, 'test': 16}

    def __init__(self, **kwargs):
        kwargs.setdefault('file_format', 'array_record')
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo itself: dataset_info_from_configs wants a package to read metadata from.
        return tfds.core.DatasetInfo(
            builder=self,
            description='Generated stand-in for scientific_papers/arxiv (same features).',
            features=tfds.features.FeaturesDict(
                {'article': tfds.features.Text(), 'abstract': tfds.features.Text(),
                 'section_names': tfds.features.Text()}),
            supervised_keys=('article', 'abstract'), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, seed)
                for seed, split in enumerate(self.SIZES)}

    def _generate_examples(self, split: str, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(self.SIZES[split]):
            yield i, paper(rng)


def prepare(data_dir: str, n_train: int | None = None) -> str:
    """Writes tiny_arxiv into data_dir (once) and returns data_dir."""
    if n_train is not None:
        TinyArxiv.SIZES = dict(TinyArxiv.SIZES, train=int(n_train))
    os.makedirs(data_dir, exist_ok=True)
    builder = TinyArxiv(data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return data_dir
