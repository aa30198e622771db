"""TransformerLM, Transformer and the Scaling Transformers: predict == eval, training, errors."""
import numpy as np
import pytest

from trax_sparse import fastmath, models, shapes
from trax_sparse import layers as tl
from tests.models import model_checks

VOCAB = 18
rng = np.random.default_rng(0)
TOKENS = rng.integers(1, VOCAB, size=(2, 7)).astype(np.int32)

LM_CONFIGS = {
    'dense': dict(),
    'sparse_ff': dict(ff_sparsity=4),
    'sparse_ff_lowrank': dict(ff_sparsity=models.SparseFFConfig(4, d_lowrank=3)),
    'sparse_qkv': dict(attention_type='sparse_qkv', qkv_sparsity=4),
    'sparse_loss': dict(loss_sparsity=2),
    'all_sparse': dict(ff_sparsity=4, attention_type='sparse_qkv', qkv_sparsity=4,
                       loss_sparsity=2),
    # LSH's defaults: one chunk covers these 7 tokens, where LSH predict equals eval exactly.
    'lsh_sparse_ff': dict(attention_type='lsh', ff_sparsity=4),
}


def scaling_lm(mode, **options):
    return models.ScalingTransformerLM(VOCAB, d_model=16, d_ff=32, n_layers=2, n_heads=2,
                                       dropout=0.1, max_len=16, mode=mode, **options)


def scaling_encdec(mode, **options):
    return models.ScalingTransformer(VOCAB, d_model=16, d_ff=32, n_encoder_layers=1,
                                     n_decoder_layers=2, n_heads=2, dropout=0.1, max_len=16,
                                     mode=mode, **options)


@pytest.mark.parametrize('config', sorted(LM_CONFIGS))
def test_lm_predict_equals_eval(config, backend_name):
    model_checks.lm_predict_equals_eval(lambda mode: scaling_lm(mode, **LM_CONFIGS[config]),
                                        TOKENS)


def test_transformer_lm_is_the_dense_scaling_lm():
    a = models.TransformerLM(VOCAB, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16,
                             mode='eval')
    b = scaling_lm('eval')
    sig = shapes.signature(TOKENS)
    wa, _ = a.init(sig, rng=fastmath.random.get_prng(0))
    wb, _ = b.init(sig, rng=fastmath.random.get_prng(0))
    assert fastmath.tree_structure(wa) == fastmath.tree_structure(wb)
    for x, y in zip(fastmath.tree_leaves(wa), fastmath.tree_leaves(wb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('config', ['dense', 'all_sparse'])
def test_encdec_predict_equals_eval_with_padded_inputs(config, backend_name):
    inputs = rng.integers(1, VOCAB, size=(2, 6)).astype(np.int32)
    inputs[0, 4:] = 0                                     # padding at the end of row 0
    model_checks.encdec_predict_equals_eval(
        lambda mode: scaling_encdec(mode, **LM_CONFIGS[config]), inputs, TOKENS[:, :5])


def test_encoder_padding_does_not_change_the_output():
    inputs = rng.integers(1, VOCAB, size=(1, 4)).astype(np.int32)
    padded = np.concatenate([inputs, np.zeros((1, 3), np.int32)], 1)
    model = scaling_encdec('eval')
    targets = TOKENS[:1, :5]
    w, s = model.init(shapes.signature((inputs, targets)))
    with fastmath.use_backend('numpy'):
        (a, _), _ = model.pure_fn((inputs, targets), w, s)
        (b, _), _ = model.pure_fn((padded, targets), w, s)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('config', ['dense', 'all_sparse'])
def test_training_step_lowers_loss(config):
    batch = (TOKENS, TOKENS, np.ones(TOKENS.shape, np.float32))
    first, last = model_checks.training_lowers_loss(
        models.ScalingTransformerLM(VOCAB, d_model=16, d_ff=32, n_layers=1, n_heads=2,
                                    max_len=16, mode='train', **LM_CONFIGS[config]), batch)
    assert last < first - 0.3, (first, last)


def test_encdec_training_step_lowers_loss():
    inputs = rng.integers(1, VOCAB, size=(2, 6)).astype(np.int32)
    targets = TOKENS[:, :5]
    batch = (inputs, targets, np.ones(targets.shape, np.float32))
    first, last = model_checks.training_lowers_loss(
        models.ScalingTransformer(VOCAB, d_model=16, d_ff=32, n_encoder_layers=1,
                                  n_decoder_layers=1, n_heads=2, max_len=16, mode='train',
                                  **LM_CONFIGS['all_sparse']), batch)
    assert last < first - 0.3, (first, last)


def test_weights_interchangeable_between_modes():
    sig = shapes.signature(TOKENS)
    trees = [fastmath.tree_structure(scaling_lm(m, **LM_CONFIGS['all_sparse']).init(
        sig if m != 'predict' else shapes.signature(TOKENS[:, :1]))[0])
        for m in ('train', 'eval', 'predict')]
    assert trees[0] == trees[1] == trees[2]


def test_token_ids_outside_vocab_are_a_clear_error(backend_name):
    model = scaling_lm('eval')
    w, s = model.init(shapes.signature(TOKENS))
    with pytest.raises(tl.LayerError, match=r'token id 18 is outside the vocabulary \[0, 18\)'):
        model.pure_fn(np.full((1, 3), VOCAB, np.int32), w, s)
    pr = scaling_lm('predict')
    pr.init(shapes.signature(TOKENS[:, :1]))
    with pytest.raises(tl.LayerError, match='outside the vocabulary'):
        pr.pure_fn(np.full((2, 1), 99, np.int32), w, pr.state)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"ScalingTransformerLM: attention_type='sparse' must be "
                                         r"one of \('dense', 'sparse_qkv', 'lsh'\)"):
        scaling_lm('eval', attention_type='sparse')
    with pytest.raises(ValueError, match=r'ff_sparsity must be N, SparseFFConfig\('):
        scaling_lm('eval', ff_sparsity=(1, 2, 3, 0.5, False, 6))
    with pytest.raises(ValueError, match='n_elements_in_block must be a positive int'):
        models.SparseFFConfig(0)
    with pytest.raises(ValueError, match='mode must be one of'):
        models.TransformerLM(VOCAB, mode='decode')


def test_transformer_takes_an_encoder_attention_part():
    lsh = models.parts.attention('lsh', 16, 2, causal=False, masked=True,
                                 lsh=dict(chunk_len=4, n_buckets=2, n_chunks_after=1))
    model = models.Transformer(VOCAB, d_model=16, d_ff=32, n_encoder_layers=1,
                               n_decoder_layers=1, n_heads=2, max_len=16,
                               encoder_attention=lsh, mode='eval')
    inputs = rng.integers(1, VOCAB, size=(2, 8)).astype(np.int32)
    sig = shapes.signature((inputs, TOKENS[:, :5]))
    assert [s.shape for s in model.output_signature(sig)] == [(2, 5, VOCAB), (2, 5)]
    assert 'LSHSelfAttention' in str(model)


def test_predict_equals_eval_with_sparse_ff_gathers_split_among_threads():
    # Large NumPy reads (17B: SparseFF's 2 x 9.4 MB of rows, a K/V cache of 38 MB) run in
    # parts on worker threads; force it at tiny size.
    with fastmath.use_backend('numpy'), fastmath.tuned(parallel_gather_min_bytes=0):
        model_checks.lm_predict_equals_eval(
            lambda mode: scaling_lm(mode, **LM_CONFIGS['all_sparse']), TOKENS)
