"""ReformerLM and Terraformer: predict == eval, padding invariance, reversible grads == autodiff."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, models, shapes
from trax_sparse import layers as tl
from trax_sparse.testing import autodiff_twin
from tests import helpers
from tests.models import model_checks

VOCAB = 16
rng = np.random.default_rng(1)
TOKENS = rng.integers(1, VOCAB, size=(2, 8)).astype(np.int32)
INPUTS = rng.integers(1, VOCAB, size=(2, 6)).astype(np.int32)
INPUTS[1, 3:] = 0                                            # row 1: three padding tokens
SMALL = dict(d_model=8, d_ff=16, n_heads=2, d_attention_key=4, d_attention_value=4, dropout=0.1,
             max_len=32)


def reformer(mode, **options):
    # One chunk covering the sequence: LSH predict equals eval exactly (docs/predict_mode.md).
    opts = dict(SMALL, n_layers=2, chunk_len=8, n_chunks_before=0, n_buckets=2, n_hashes=2)
    if 'ff' in options:                       # a part replaces the flags that build it
        del opts['d_ff']
    if 'attention' in options:
        for flag in ('chunk_len', 'n_chunks_before', 'n_buckets', 'n_hashes', 'd_attention_key',
                     'd_attention_value'):
            del opts[flag]
    opts.update(options)
    return models.ReformerLM(VOCAB, mode=mode, **opts)


def terraformer(mode, **options):
    opts = dict(SMALL, n_encoder_layers=1, n_decoder_layers=1, chunk_len=16, n_chunks_before=0,
                n_buckets=2)
    opts.update(options)
    return models.Terraformer(VOCAB, mode=mode, **opts)


TERRA_CONFIGS = {
    'dense': dict(),
    'lsh': dict(encoder_attention_type='lsh', decoder_attention_type='lsh'),
    'sparse': dict(decoder_attention_type='sparse_qkv', qkv_sparsity=2, ff_sparsity=4,
                   loss_sparsity=2),
    'sparse_sru': dict(decoder_attention_type='sparse_qkv', qkv_sparsity=2, ff_sparsity=4,
                       loss_sparsity=2, ff_use_sru=(1, 4)),   # the SRU beside the FF
}


@pytest.mark.parametrize('attention', ['lsh', 'dense'])
def test_reformer_predict_equals_eval(attention, backend_name):
    model_checks.lm_predict_equals_eval(lambda mode: reformer(mode, attention_type=attention),
                                        TOKENS)


@pytest.mark.parametrize('config', sorted(TERRA_CONFIGS))
def test_terraformer_predict_equals_eval_with_padded_inputs(config, backend_name):
    model_checks.encdec_predict_equals_eval(
        lambda mode: terraformer(mode, **TERRA_CONFIGS[config]), INPUTS, TOKENS[:, :5])


@pytest.mark.parametrize('config', ['dense', 'lsh', 'sparse_sru'])
def test_terraformer_predict_with_inputs_at_every_step_equals_eval(config, backend_name):
    # Trax's decoding passes the encoder inputs again at every call: the model ignores them
    # after the first (EncoderInputsOnce); on JAX every call is jitted (a cond on the count).
    model_checks.encdec_predict_equals_eval(
        lambda mode: terraformer(mode, **TERRA_CONFIGS[config]), INPUTS, TOKENS[:, :5],
        prefix=1, inputs_every_step=True)


@pytest.mark.parametrize('config', sorted(TERRA_CONFIGS))
def test_terraformer_output_ignores_encoder_padding(config):
    model = terraformer('eval', **TERRA_CONFIGS[config])
    short = INPUTS[1:, :3]                                    # row 1 without its padding
    targets = TOKENS[1:, :5]
    w, s = model.init(shapes.signature((INPUTS[1:], targets)))
    with fastmath.use_backend('numpy'):
        (padded_out, _), _ = model.pure_fn((INPUTS[1:], targets), w, s)
        (short_out, _), _ = model.pure_fn((short, targets), w, s)
    np.testing.assert_allclose(padded_out, short_out, atol=1e-5)


def test_terraformer_reversible_gradients_equal_autodiff():
    # Sparse QKV + sparse FF + dropout: replays rng (dropout, Gumbel) and state (FF choices).
    model = terraformer('train', n_decoder_attention_layers=1, **TERRA_CONFIGS['sparse'])
    targets = TOKENS[:, :5]
    batch = (INPUTS, targets)
    w, s = model.init(shapes.signature(batch), rng=fastmath.random.get_prng(0))
    twin = autodiff_twin(model)
    key = np.array([0, 42], np.uint32)
    loss_layer = tl.CrossEntropyLoss()

    def loss(layer, weights):
        (logits, _), _ = layer.pure_fn(batch, weights, s, key)
        return loss_layer((logits, targets, np.ones(targets.shape)))

    with fastmath.use_backend('jax'), jax.enable_x64(True):
        w64 = helpers.to_float64(w)
        g_rev = jax.jit(jax.grad(lambda w_: loss(model, w_)))(w64)
        g_twin = jax.jit(jax.grad(lambda w_: loss(twin, w_)))(w64)
    helpers.assert_trees_close(g_rev, g_twin, atol=1e-9, rtol=1e-5)
    assert max(float(np.abs(np.asarray(g)).max()) for g in fastmath.tree_leaves(g_rev)) > 0


def test_reformer_and_terraformer_training_lowers_loss():
    batch = (TOKENS, TOKENS, np.ones(TOKENS.shape, np.float32))
    first, last = model_checks.training_lowers_loss(reformer('train', n_layers=1), batch)
    assert last < first - 0.3, (first, last)
    targets = TOKENS[:, :5]
    batch = (INPUTS, targets, np.ones(targets.shape, np.float32))
    first, last = model_checks.training_lowers_loss(
        terraformer('train', n_decoder_attention_layers=1, **TERRA_CONFIGS['sparse']), batch)
    assert last < first - 0.3, (first, last)


def test_terraformer_rejects_padding_before_real_tokens():
    model = terraformer('eval')
    bad = INPUTS.copy()
    bad[0, 1] = 0
    w, s = model.init(shapes.signature((bad, TOKENS[:, :5])))
    with fastmath.use_backend('numpy'):
        with pytest.raises(tl.LayerError, match='encoder padding \\(id 0\\) must come after'):
            model.pure_fn((bad, TOKENS[:, :5]), w, s)


def _same_model(a, b, inputs):
    """Same weights (same init rng) and the same outputs."""
    wa, sa = a.init(shapes.signature(inputs), rng=fastmath.random.get_prng(0))
    wb, sb = b.init(shapes.signature(inputs), rng=fastmath.random.get_prng(0))
    assert fastmath.tree_structure(wa) == fastmath.tree_structure(wb)
    with fastmath.use_backend('numpy'):
        ya, _ = a.pure_fn(inputs, wa, sa)
        yb, _ = b.pure_fn(inputs, wb, sb)
    np.testing.assert_array_equal(np.asarray(ya[0]), np.asarray(yb[0]))


def test_terraformer_parts_replace_the_flags():
    parts = models.parts
    flags = terraformer('eval', **TERRA_CONFIGS['sparse_sru'])
    with_parts = models.Terraformer(
        VOCAB, mode='eval', ff_use_sru=(1, 4), d_model=8, n_heads=2, d_attention_key=4,
        d_attention_value=4, dropout=0.1, max_len=32, n_encoder_layers=1, n_decoder_layers=1,
        chunk_len=16, n_chunks_before=0, n_buckets=2,
        decoder_attention=parts.attention('sparse_qkv', 8, 2, masked=True, dropout=0.1,
                                          max_len=32, qkv_sparsity=2),
        ff=parts.feed_forward(8, 16, models.SparseFFConfig(4), dropout=0.1),
        output=parts.output_layer(VOCAB, loss_sparsity=2))
    _same_model(flags, with_parts, (INPUTS, TOKENS[:, :5]))
    lsh = dict(chunk_len=16, n_chunks_before=0, n_buckets=2, n_hashes=1)
    heads = dict(masked=True, dropout=0.1, max_len=32, d_attention_key=4, d_attention_value=4)
    with_parts = models.Terraformer(
        VOCAB, mode='eval', d_model=8, d_ff=16, n_heads=2, dropout=0.1, max_len=32,
        n_encoder_layers=1, n_decoder_layers=1,
        encoder_attention=parts.attention('lsh', 8, 2, causal=False, **heads,
                                          lsh=dict(lsh, n_chunks_after=1)),
        decoder_attention=parts.attention('lsh', 8, 2, **heads, lsh=lsh))
    _same_model(terraformer('eval', **TERRA_CONFIGS['lsh']), with_parts,
                (INPUTS, TOKENS[:, :5]))


def test_reformer_parts_and_sparse_ff_config():
    flags = reformer('eval', ff_sparsity=(4, 2, 0.5))       # a recorded config's tuple
    with_parts = reformer('eval', ff=models.parts.feed_forward(
        8, 16, models.SparseFFConfig(4, d_lowrank=2, temperature=0.5), dropout=0.1,
        activation=tl.FastGelu))
    wa, sa = flags.init(shapes.signature(TOKENS), rng=fastmath.random.get_prng(0))
    wb, sb = with_parts.init(shapes.signature(TOKENS), rng=fastmath.random.get_prng(0))
    helpers.assert_trees_close(wa, wb, atol=0, rtol=0)
    with fastmath.use_backend('numpy'):
        np.testing.assert_array_equal(flags.pure_fn(TOKENS, wa, sa)[0],
                                      with_parts.pure_fn(TOKENS, wb, sb)[0])
    model_checks.lm_predict_equals_eval(
        lambda mode: reformer(mode, attention=models.parts.attention(
            'dense', 8, 2, dropout=0.1, max_len=32)), TOKENS)


def test_a_part_and_a_flag_that_builds_it_are_an_error_naming_both():
    ff = models.parts.feed_forward(8, 16)
    with pytest.raises(ValueError, match=r'Terraformer: ff= was given, so d_ff=16 / '
                                         r'ff_sparsity=4 would be ignored; give one'):
        models.Terraformer(VOCAB, d_model=8, d_ff=16, ff_sparsity=4, ff=ff)
    with pytest.raises(ValueError, match=r"Terraformer: decoder_attention= was given, so "
                                         r"decoder_attention_type='lsh' would be ignored"):
        models.Terraformer(VOCAB, decoder_attention_type='lsh',
                           decoder_attention=models.parts.attention('dense', 8, 2, masked=True))
    with pytest.raises(ValueError, match=r'Terraformer: output= was given, so loss_sparsity=2'):
        models.Terraformer(VOCAB, loss_sparsity=2, output=models.parts.output_layer(VOCAB))
    with pytest.raises(ValueError, match=r"ReformerLM: attention= was given, so "
                                         r"attention_type='dense' / chunk_len=8 would be"):
        models.ReformerLM(VOCAB, attention_type='dense', chunk_len=8,
                          attention=models.parts.attention('dense', 8, 2))
    with pytest.raises(ValueError, match=r'TransformerLM: ff= was given, so d_ff=16 would'):
        models.TransformerLM(VOCAB, d_ff=16, ff=ff)
    # d_model builds every part: not an error; the encoder's own FF leaves d_ff to it
    models.Terraformer(VOCAB, d_model=8, n_heads=2, ff=ff)
    models.Transformer(VOCAB, d_model=8, d_ff=16, ff=ff, encoder_ff=ff)
    models.Terraformer(VOCAB, d_model=8, d_ff=16, ff=ff, encoder_ff=ff)


@pytest.mark.parametrize('make, parameter', [
    (lambda: models.ScalingTransformerLM(VOCAB, attention_type='no_such_attention'),
     'ScalingTransformerLM: attention_type'),
    (lambda: models.ScalingTransformer(VOCAB, attention_type='no_such_attention'),
     'ScalingTransformer: attention_type'),
    (lambda: models.ReformerLM(VOCAB, attention_type='no_such_attention'),
     'ReformerLM: attention_type'),
    (lambda: models.Terraformer(VOCAB, decoder_attention_type='no_such_attention'),
     'Terraformer: decoder_attention_type'),
    (lambda: models.Terraformer(VOCAB, encoder_attention_type='no_such_attention'),
     'Terraformer: encoder_attention_type'),
])
def test_a_bad_kind_names_its_model_parameter(make, parameter):
    with pytest.raises(ValueError, match=rf"{parameter}='no_such_attention' must be one of "):
        make()


def test_attention_factory_errors_say_what_to_pass():
    attention = models.parts.attention
    with pytest.raises(ValueError, match=r"bidirectional attention kind must be one of "
                                         r"\('dense', 'lsh'\), got 'sparse_qkv'"):
        attention('sparse_qkv', 8, 2, causal=False, masked=True)
    with pytest.raises(ValueError, match='pass masked=True'):
        attention('dense', 8, 2, causal=False)
