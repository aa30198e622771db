"""The one token rule (layers/token_ids.py) as training, decoding and the Embedding apply it:
input i of a model holds ids below the vocabulary of the embedding that reads it, so an
encoder-decoder's inputs and targets are each checked against their own vocabulary."""
import numpy as np
import pytest

from trax_sparse import decoding, fastmath, models, shapes
from trax_sparse import layers as tl
from trax_sparse.layers import token_ids
from trax_sparse.training.token_check import TokenRanges

IN_VOCAB, OUT_VOCAB = 20, 8
INPUTS = np.array([[3, 19, 5, 0]], np.int32)          # 19: valid for the encoder only


def _transformer(mode):
    return models.Transformer(IN_VOCAB, OUT_VOCAB, d_model=8, d_ff=16, n_encoder_layers=1,
                              n_decoder_layers=1, n_heads=2, max_len=12, mode=mode)


def test_the_rule_gives_each_input_its_embedding_and_else_the_smallest():
    assert token_ids.input_vocab_sizes(_transformer('eval')) == (IN_VOCAB, OUT_VOCAB)
    assert token_ids.input_vocab_sizes(models.TransformerLM(11, n_layers=1)) == (11,)
    two_tables = tl.Serial(tl.Branch(tl.Embedding(9, 4), tl.Embedding(6, 4)), tl.Add())
    assert token_ids.input_vocab_sizes(two_tables) == (6,)     # valid for both tables
    assert token_ids.input_vocab_sizes(tl.Dense(3)) == (None,)
    with pytest.raises(ValueError, match=r"x holds token id -2, outside the model's vocabulary "
                                         r"\(ids >= 0\)"):
        token_ids.check_token_ids(np.array([1, -2]), None, 'x')
    with pytest.raises(ValueError, match='x must be integer token ids, got dtype float32'):
        token_ids.check_token_ids(np.ones(2, np.float32), 5, 'x')
    token_ids.check_token_ids(np.array([4, -1]), 5, 'x', allowed=-1)   # a padding id


def test_decoding_checks_encoder_inputs_and_prompt_against_their_own_vocabularies():
    model = _transformer('predict')
    with fastmath.use_backend('numpy'):
        model.init((shapes.signature(INPUTS), shapes.ShapeDtype((1, 1), np.int32)))
        out = decoding.autoregressive_sample(model, inputs=INPUTS, max_length=2,
                                             temperature=0.0)
        assert out.shape == (1, 2) and out.max() < OUT_VOCAB
        with pytest.raises(ValueError, match=r"decoding: prompt holds token id 12, outside the "
                                             r"model's vocabulary \[0, 8\)"):
            decoding.beam_search(model, inputs=INPUTS, prompt=np.array([[12]]), beam_size=2,
                                 max_length=2)
        with pytest.raises(ValueError, match=r"decoding: inputs holds token id 20, outside the "
                                             r"model's vocabulary \[0, 20\)"):
            decoding.autoregressive_sample(model, inputs=INPUTS + 1, max_length=2)


def test_training_checks_each_model_input_against_its_own_vocabulary():
    model = _transformer('train')
    targets = np.array([[1, 7, 2, 3]], np.int32)
    info = {'vocab_sizes': list(model.vocab_sizes()), 'output_shape': (1, 4, OUT_VOCAB)}
    ranges = TokenRanges(info, (INPUTS, targets, targets), model.n_in, pad_id=0)
    ranges.check((INPUTS, targets, targets, np.ones((1, 4))), model.n_in, 'batch 1')
    with pytest.raises(ValueError, match=r"batch 2: inputs item 1 holds token id 19, outside "
                                         r"the model's vocabulary \[0, 8\)"):
        ranges.check((INPUTS, INPUTS, targets), model.n_in, 'batch 2')
    with pytest.raises(ValueError, match=r'batch 3: targets hold token id 9, outside the model '
                                         r'output width \[0, 8\)'):
        ranges.check((INPUTS, targets, targets + 2), model.n_in, 'batch 3')
