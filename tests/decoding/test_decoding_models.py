"""Greedy decoding of real models equals argmax of their eval logits; NumPy == JAX tokens."""
import numpy as np
import pytest

from trax_sparse import decoding, fastmath, models, shapes

VOCAB = 16
rng = np.random.default_rng(2)
INPUTS = rng.integers(1, VOCAB, size=(2, 6)).astype(np.int32)
INPUTS[0, 4:] = 0


def scaling_lm(mode):
    return models.ScalingTransformerLM(VOCAB, d_model=16, d_ff=32, n_layers=1, n_heads=2,
                                       max_len=16, ff_sparsity=4, attention_type='sparse_qkv',
                                       qkv_sparsity=4, loss_sparsity=2, mode=mode)


def terraformer(mode):
    return models.Terraformer(VOCAB, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1,
                              n_heads=2, max_len=32, mode=mode)


def _pair(make, eval_sig, predict_sig):
    ev, pr = make('eval'), make('predict')
    weights, _ = ev.init(eval_sig, rng=fastmath.random.get_prng(4))
    pr.init(predict_sig)
    pr.weights = weights
    return ev, pr


def test_lm_greedy_equals_eval_argmax(backend_name):
    ev, pr = _pair(scaling_lm, shapes.ShapeDtype((2, 6), np.int32),
                   shapes.ShapeDtype((2, 1), np.int32))
    seq = decoding.autoregressive_sample(pr, batch_size=2, temperature=0.0, max_length=6)
    logits, _ = ev.pure_fn(seq, ev.weights, ev.state)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), seq)


def test_terraformer_greedy_equals_eval_argmax_with_padded_batch(backend_name):
    ev, pr = _pair(terraformer, (shapes.signature(INPUTS), shapes.ShapeDtype((2, 5), np.int32)),
                   (shapes.signature(INPUTS), shapes.ShapeDtype((2, 1), np.int32)))
    seq = decoding.autoregressive_sample(pr, inputs=INPUTS, temperature=0.0, max_length=5)
    (logits, _), _ = ev.pure_fn((INPUTS, seq), ev.weights, ev.state)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), seq)


@pytest.mark.parametrize('make', [scaling_lm, terraformer], ids=['scaling_lm', 'terraformer'])
def test_numpy_and_jax_decode_the_same_tokens(make):
    is_encdec = make is terraformer
    eval_sig = ((shapes.signature(INPUTS), shapes.ShapeDtype((2, 5), np.int32)) if is_encdec
                else shapes.ShapeDtype((2, 6), np.int32))
    predict_sig = ((shapes.signature(INPUTS), shapes.ShapeDtype((2, 1), np.int32)) if is_encdec
                   else shapes.ShapeDtype((2, 1), np.int32))
    _, pr = _pair(make, eval_sig, predict_sig)
    outs = []
    for name in ('numpy', 'jax'):
        with fastmath.use_backend(name):
            outs.append(decoding.autoregressive_sample(
                pr, inputs=INPUTS if is_encdec else None, batch_size=2, temperature=0.0,
                max_length=5))
    np.testing.assert_array_equal(*outs)
