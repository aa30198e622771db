"""The predict-mode contract (docs/predict_mode.md), checked on every model and both backends.

- every predict state starts at zero, so `init_predict_state` (from the state signature alone)
  equals the state a real init makes, for any batch size;
- the prefix call and the later calls all run under jit (the model-level predict == eval checks
  in tests/models jit the first call too);
- a decode past max_len, or with an id outside the vocabulary, is a clear error before any
  token, on both backends; Embedding under jit never reads another row for a bad id.
"""
import numpy as np
import pytest

from trax_sparse import decoding, fastmath, models, shapes
from trax_sparse import layers as tl
from trax_sparse.decoding import predict_state

VOCAB = 16
INPUTS = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], np.int32)
SMALL = dict(d_model=8, d_ff=16, n_heads=2, max_len=12)


def _lm(factory, **options):
    return lambda mode: factory(VOCAB, n_layers=1, mode=mode, **SMALL, **options)


def _encdec(factory, **options):
    return lambda mode: factory(VOCAB, n_encoder_layers=1, n_decoder_layers=1, mode=mode,
                                **SMALL, **options)


MODELS = {
    'transformer_lm': (_lm(models.TransformerLM), False),
    'scaling_lm': (_lm(models.ScalingTransformerLM, ff_sparsity=4, attention_type='sparse_qkv',
                       qkv_sparsity=2, loss_sparsity=2), False),
    'reformer_lsh': (_lm(models.ReformerLM, attention_type='lsh', chunk_len=4, n_buckets=2),
                     False),
    'transformer': (_encdec(models.Transformer), True),
    'terraformer_lsh': (_encdec(models.Terraformer, encoder_attention_type='lsh',
                                decoder_attention_type='lsh', chunk_len=4, n_buckets=2), True),
    'terraformer_sparse': (_encdec(models.Terraformer, decoder_attention_type='sparse_qkv',
                                   qkv_sparsity=2, ff_sparsity=4, loss_sparsity=2), True),
}


def _step_signature(is_encdec: bool, batch: int):
    tokens = shapes.ShapeDtype((batch, 1), np.int32)
    return (shapes.ShapeDtype((batch, INPUTS.shape[1]), np.int32), tokens) if is_encdec else tokens


def _predict_model(name: str):
    make, is_encdec = MODELS[name]
    model = make('predict')
    model.init(_step_signature(is_encdec, 1), rng=fastmath.random.get_prng(3))
    return model, is_encdec


@pytest.mark.parametrize('name', sorted(MODELS))
def test_predict_state_starts_at_zero_and_comes_from_its_signature(name):
    model, is_encdec = _predict_model(name)
    with fastmath.use_backend('numpy'):
        for batch in (1, 3):
            sig = _step_signature(is_encdec, batch)
            _, real = model.pure_init(sig)
            made = decoding.init_predict_state(model, sig)
            assert fastmath.tree_structure(made) == fastmath.tree_structure(real)
            for a, b in zip(fastmath.tree_leaves(made), fastmath.tree_leaves(real)):
                assert a.shape == b.shape and a.dtype == b.dtype
                assert not np.any(np.asarray(b)), 'a predict state must start at zero'


def test_pure_init_and_signatures_leave_the_model_untouched(backend_name):
    model, _ = _predict_model('scaling_lm')
    before = [(layer.weights, layer.state) for layer in _walk(model)]
    sig = _step_signature(False, 4)
    model.pure_init(sig)
    model.state_signature(sig)
    model.weights_signature(sig)
    after = [(layer.weights, layer.state) for layer in _walk(model)]
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(before, after))


def test_pure_init_under_jit_leaves_no_tracers():
    model = tl.Serial(tl.Dense(3), tl.Dense(2))
    with fastmath.use_backend('jax'):
        weights, _ = fastmath.jit(lambda: model.pure_init(shapes.ShapeDtype((1, 4))))()
    assert weights[0][0].shape == (4, 3)
    assert all(layer.weights is None for layer in _walk(model))


def _walk(layer):
    yield layer
    for sub in layer.sublayers:
        yield from _walk(sub)


@pytest.mark.parametrize('name', ['scaling_lm', 'terraformer_sparse', 'reformer_lsh'])
def test_decoding_past_max_len_is_an_error_before_any_token(name, backend_name):
    model, is_encdec = _predict_model(name)
    inputs = INPUTS if is_encdec else None
    joint = INPUTS.shape[1] if name.startswith('terraformer') else 0   # encoder in the caches
    fits = SMALL['max_len'] - joint
    out = decoding.autoregressive_sample(model, inputs=inputs, batch_size=2, temperature=0.0,
                                         max_length=fits)
    assert out.shape == (2, fits)
    with pytest.raises(ValueError, match='cannot decode that far'):
        decoding.autoregressive_sample(model, inputs=inputs, batch_size=2, max_length=fits + 1)
    with pytest.raises(ValueError, match='cannot decode that far'):
        decoding.beam_search(model, inputs=inputs, batch_size=1, beam_size=2,
                             max_length=fits + 1)
    stream = decoding.autoregressive_sample_stream(model, inputs=inputs, batch_size=1,
                                                   temperature=0.0)
    for _ in range(fits):
        next(stream)
    with pytest.raises(ValueError, match='caches .* are full'):
        next(stream)


def test_prompt_ids_outside_the_vocabulary_are_rejected_on_the_host(backend_name):
    model, _ = _predict_model('scaling_lm')
    for bad in (VOCAB, -1):
        with pytest.raises(ValueError, match=f"prompt holds token id {bad}, outside the "
                                             f"model's vocabulary"):
            decoding.autoregressive_sample(model, prompt=np.array([[2, bad]]), max_length=2)
        with pytest.raises(ValueError, match=f'token id {bad}'):
            decoding.beam_search(model, prompt=np.array([[bad]]), beam_size=2, max_length=2)


def test_encoder_inputs_outside_the_vocabulary_are_rejected_on_the_host(backend_name):
    model, _ = _predict_model('transformer')
    with pytest.raises(ValueError, match='inputs holds token id 102'):
        decoding.autoregressive_sample(model, inputs=INPUTS + 99 * (INPUTS == 3), max_length=2)


def test_embedding_under_jit_gives_nan_for_bad_ids_never_another_row():
    layer = tl.Embedding(5, 3)
    with fastmath.use_backend('jax'):
        weights, state = layer.init(shapes.ShapeDtype((1, 3), np.int32))
        out, _ = fastmath.jit(layer.pure_fn)(np.array([[1, -1, 5]], np.int32), weights, state)
    out = np.asarray(out)
    np.testing.assert_allclose(out[0, 0], np.asarray(weights[0])[1])
    assert np.isnan(out[0, 1:]).all()


def test_a_state_made_for_another_batch_size_decodes(backend_name):
    model, _ = _predict_model('transformer_lm')            # initialized for batch 1
    out = decoding.autoregressive_sample(model, batch_size=3, temperature=0.0, max_length=4)
    assert out.shape == (3, 4)
    assert (out == out[:1]).all()                          # same start, greedy: same rows


@pytest.mark.parametrize('name', ['transformer', 'terraformer_sparse'])
def test_later_calls_with_the_encoder_inputs_again_equal_empty_ones(name, backend_name):
    # Trax's form (the inputs at every call) and the documented one (inputs[:, :0] after the
    # prefix) give the same logits through the decoding step: flat on NumPy, jitted on JAX.
    model, _ = _predict_model(name)
    step = decoding.predict_step(model)
    tokens = np.array([[0], [0]], np.int32)
    logits = []
    for later in (INPUTS, predict_state.later_inputs(INPUTS)):
        state = decoding.init_predict_state(model, _step_signature(True, 2))
        rows = []
        for t in range(3):
            out, state = step((INPUTS if t == 0 else later, tokens + t), model.weights, state,
                              fastmath.random.get_prng(0))
            rows.append(np.asarray(out))
        logits.append(np.stack(rows))
    assert np.isfinite(logits[0]).all()
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5, rtol=1e-5)
