"""Byte-level and SentencePiece tokenizers: round trips, reserved ids, sentinels, bad input."""
import numpy as np
import pytest

from trax_sparse.data import ByteTokenizer, SentencePieceTokenizer, train_sentencepiece

TINY_CORPUS = ['To be, or not to be: that is the question:',
               "Whether 'tis nobler in the mind to suffer",
               'The slings and arrows of outrageous fortune,',
               'Or to take arms against a sea of troubles,'] * 5


def test_byte_tokenizer_ids_are_bytes_plus_reserved_and_round_trip():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, 258)
    ids = tok.encode('Ab é\n')
    assert ids.dtype == np.int32
    assert ids.tolist() == [b + 2 for b in 'Ab é\n'.encode('utf-8')]
    for text in ['', 'plain ascii', 'Grüße, 漢字 and emoji \U0001F600\n\ttabs']:
        assert tok.decode(tok.encode(text)) == text


def test_byte_tokenizer_decode_skips_pad_and_eos_and_names_sentinels():
    tok = ByteTokenizer(n_extra_ids=3)
    assert tok.vocab_size == 261 and tok.sentinel_id(0) == 260 and tok.sentinel_id(2) == 258
    ids = np.concatenate([tok.encode('ab'), [1, 0, tok.sentinel_id(1)], tok.encode('c'), [0, 0]])
    assert tok.decode(ids) == 'ab<extra_id_1>c'
    with pytest.raises(ValueError, match='3 extra ids; sentinel 3 does not exist'):
        tok.sentinel_id(3)


def test_byte_tokenizer_errors():
    tok = ByteTokenizer()
    bad_utf8 = np.array([0xFF + 2, ord('a') + 2])
    with pytest.raises(ValueError, match=r'not UTF-8 text \(byte 0xff at byte offset 0'):
        tok.decode(bad_utf8)
    assert tok.decode(bad_utf8, errors='replace') == '\ufffda'
    with pytest.raises(ValueError, match=r'id 258 is outside the vocabulary \[0, 258\)'):
        tok.decode([5, 258])
    with pytest.raises(TypeError, match='expects str, got bytes'):
        tok.encode(b'abc')
    with pytest.raises(ValueError, match='n_reserved >= 2'):
        ByteTokenizer(n_reserved=1)


def test_sentencepiece_train_save_load_round_trip(tmp_path):
    tok = train_sentencepiece(TINY_CORPUS, vocab_size=300, n_extra_ids=2, num_threads=1)
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    assert tok.vocab_size == tok._processor.get_piece_size() + 2
    text = 'To suffer the slings,\nor to take arms?  Grüße 漢'   # unseen chars: byte fallback
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size - 2
    assert tok.decode(ids) == text
    path = tok.save(tmp_path / 'models' / 'tiny.model')
    loaded = SentencePieceTokenizer.load(path, n_extra_ids=2)
    assert loaded.vocab_size == tok.vocab_size
    for line in TINY_CORPUS[:4] + [text]:
        np.testing.assert_array_equal(loaded.encode(line), tok.encode(line))
        assert loaded.decode(loaded.encode(line)) == line
    assert loaded.decode([tok.sentinel_id(0)]) == '<extra_id_0>'


def test_sentencepiece_bpe_without_byte_fallback_trains_small_vocab():
    tok = train_sentencepiece(TINY_CORPUS, vocab_size=60, model_type='bpe',
                              byte_fallback=False, num_threads=1)
    assert 20 < tok.vocab_size <= 60
    assert tok.decode(tok.encode(TINY_CORPUS[0])) == TINY_CORPUS[0]


def test_sentencepiece_missing_corrupt_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model file '.*nope\.model' does not exist"):
        SentencePieceTokenizer.load(tmp_path / 'nope.model')
    for name, content in [('garbage.model', b'\x08\x96\x01 not a model'), ('empty.model', b'')]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"'.*{name}' is not a valid SentencePiece model"):
            SentencePieceTokenizer.load(tmp_path / name)
    with pytest.raises(ValueError, match='the corpus is empty'):
        train_sentencepiece([], vocab_size=50)
    with pytest.raises(ValueError, match="model_type must be 'unigram'"):
        train_sentencepiece(TINY_CORPUS, vocab_size=50, model_type='wordpiece')
