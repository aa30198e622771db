"""Decoding with 16-bit weights and K/V caches (decoding.storage): what is stored in 16 bits,
and that the logits stay within bfloat16 round-off of float32 on both backends."""
import numpy as np
import pytest

from trax_sparse import decoding, fastmath, models, shapes
from trax_sparse.decoding import storage

VOCAB = 40
TOKEN = shapes.ShapeDtype((1, 1), np.int32)


def sparse_lm(max_len: int = 16):
    """A tiny Scaling Transformer: embedding, sparse QKV attention, SparseFF, sparse loss."""
    model = models.ScalingTransformerLM(VOCAB, d_model=16, d_ff=64, n_layers=1, n_heads=2,
                                        max_len=max_len, ff_sparsity=4,
                                        attention_type='sparse_qkv', qkv_sparsity=2,
                                        loss_sparsity=2, dropout=0.0, mode='predict')
    with fastmath.use_backend('numpy'):
        model.init(TOKEN, rng=fastmath.random.get_prng(1))
    return model


def _dtypes(tree) -> set:
    return set(decoding.stored_dtypes(tree))      # the float leaves' dtype names


def test_weights_dtype_stores_all_or_only_the_gathered_rows():
    model = sparse_lm()
    weights = model.weights
    full = storage.store_weights(model, weights, 'bfloat16')
    assert _dtypes(full) == {'bfloat16'}
    assert model.bytes_read_per_step(full) <= 0.55 * model.bytes_read_per_step(weights)
    gathered = storage.store_weights(model, weights, 'gathered_bfloat16')
    chosen = {id(a) for a in model.gathered_weights(weights)}
    # the embedding and position tables and SparseFF's W1ᵀ and W2 rows; nothing else
    assert len(chosen) == 4
    for before, after in zip(fastmath.tree_leaves(weights), fastmath.tree_leaves(gathered)):
        assert str(after.dtype) == ('bfloat16' if id(before) in chosen else 'float32')
    assert storage.resolve_weights_dtype('auto', 'cpu') == 'float32'
    assert storage.resolve_weights_dtype('auto', 'gpu') == 'bfloat16'
    assert storage.store_weights(model, weights, None) is weights
    assert model.bytes_read_per_step(gathered) < model.bytes_read_per_step(weights)


def test_cache_dtype_casts_attention_caches_only():
    """Encoder-decoder Transformer: causal and encoder-decoder K/V caches in bfloat16; the
    cached encoder outputs (tl.Cache), positions and flags keep their dtypes."""
    model = models.Transformer(VOCAB, d_model=8, d_ff=16, n_encoder_layers=1,
                               n_decoder_layers=1, n_heads=2, max_len=8, dropout=0.0,
                               mode='predict')
    signature = (shapes.ShapeDtype((1, 5), np.int32), TOKEN)
    with fastmath.use_backend('numpy'):
        model.init(signature)
        plain = decoding.init_predict_state(model, signature)
        state = decoding.init_predict_state(model, signature, cache_dtype='bfloat16')
    caches = {id(a) for a in model.attention_caches(state)}
    assert len(caches) == 4                             # causal k, v; encoder-decoder k, v
    changed = 0
    for before, after in zip(fastmath.tree_leaves(plain), fastmath.tree_leaves(state)):
        assert before.shape == after.shape
        if id(after) in caches:
            assert str(after.dtype) == 'bfloat16' and str(before.dtype) == 'float32'
            changed += 1
        else:
            assert after.dtype == before.dtype
    assert changed == 4 and 'float32' in _dtypes(state)   # the cached encoder output


def test_lsh_cache_dtype_keeps_the_hash_rotations_float32():
    model = models.ReformerLM(VOCAB, d_model=8, d_ff=16, n_layers=1, n_heads=2,
                              d_attention_key=4, d_attention_value=4, chunk_len=4,
                              n_buckets=2, max_len=8, dropout=0.0, mode='predict')
    with fastmath.use_backend('numpy'):
        model.init(TOKEN)
        state = decoding.init_predict_state(model, TOKEN, cache_dtype='bfloat16')
    caches = model.attention_caches(state)
    assert [str(c.dtype) for c in caches] == ['bfloat16', 'bfloat16']
    rotations = [a for a in fastmath.tree_leaves(state) if a.ndim == 4 and a.shape[0] == 2]
    assert rotations and all(str(r.dtype) == 'float32' for r in rotations)


def _greedy_logits(model, weights_dtype, cache_dtype, n_steps: int = 5):
    """Greedy decoding by hand: (logits of every step [n, V], the final state)."""
    weights = fastmath.to_backend(storage.store_weights(model, model.weights, weights_dtype))
    state = decoding.fresh_state(model, None, TOKEN, cache_dtype)
    step, rng = decoding.predict_step(model), fastmath.random.get_prng(0)
    logits, state, _ = decoding.start_decoding(model, step, np.zeros((1, 1), np.int32), weights,
                                               state, rng, n_steps)
    out = [np.asarray(logits, np.float32)]
    for _ in range(n_steps - 1):
        token = np.argmax(out[-1], -1).astype(np.int32)[:, None]
        logits, state = step(token, weights, state, rng)
        out.append(np.asarray(logits, np.float32))
    return np.concatenate(out), state


def test_bf16_weights_and_caches_decode_within_bf16_tolerance_of_float32(backend_name):
    model = sparse_lm()
    reference, _ = _greedy_logits(model, None, None)
    for weights_dtype in ('bfloat16', 'gathered_bfloat16'):
        logits, state = _greedy_logits(model, weights_dtype, 'bfloat16')
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, reference, rtol=3e-2, atol=3e-2 * np.abs(
            reference).max())
        # the caches stay bfloat16 through the steps (in place on NumPy, donated under jit)
        assert [str(c.dtype) for c in model.attention_caches(state)] == ['bfloat16'] * 2
    tokens = [decoding.autoregressive_sample(model, max_length=6, temperature=0.0,
                                             weights_dtype=dtype, cache_dtype=cache)
              for dtype, cache in ((None, None), ('bfloat16', 'bfloat16'))]
    assert tokens[0].shape == tokens[1].shape == (1, 6)


def test_numpy_and_jax_agree_with_bf16_weights():
    model = sparse_lm()
    logits = {}
    for backend in ('numpy', 'jax'):
        with fastmath.use_backend(backend):
            logits[backend], _ = _greedy_logits(model, 'bfloat16', 'bfloat16', n_steps=3)
    scale = np.abs(logits['numpy']).max()
    np.testing.assert_allclose(logits['jax'], logits['numpy'], rtol=3e-2, atol=1e-2 * scale)


def test_beam_search_takes_the_storage_arguments():
    model = sparse_lm()
    with fastmath.use_backend('numpy'):
        seqs, _ = decoding.beam_search(model, beam_size=2, max_length=4,
                                       weights_dtype='bfloat16', cache_dtype='bfloat16')
    assert seqs.shape == (1, 2, 4)


@pytest.mark.parametrize('call, message', [
    (lambda: storage.check_weights_dtype('bf16', '--weights_dtype'),
     r"--weights_dtype='bf16': expected one of auto, float32, bfloat16, float16, "
     r'gathered_bfloat16'),
    (lambda: storage.check_cache_dtype('int8', '--cache_dtype'),
     r"--cache_dtype='int8': expected one of float32, bfloat16, float16"),
    (lambda: decoding.autoregressive_sample(sparse_lm(), max_length=2, weights_dtype='half'),
     r"weights_dtype='half': expected one of"),
])
def test_unknown_dtypes_name_the_argument_and_the_choices(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_stored_loss_with_bf16_weights_is_within_half_a_percent_of_float32():
    model = models.ScalingTransformerLM(VOCAB, d_model=16, d_ff=64, n_layers=1, n_heads=2,
                                        ff_sparsity=4, dropout=0.0, mode='eval')
    gen = np.random.default_rng(0)
    batches = [(x, x, np.ones_like(x)) for x in
               (gen.integers(0, VOCAB, (2, 8)).astype(np.int32) for _ in range(2))]
    with fastmath.use_backend('numpy'):
        weights, _ = model.init(shapes.signature(batches[0][0]), rng=fastmath.random.get_prng(2))
        f32, bf16 = decoding.compare_storage(model, weights, iter(batches), 'bfloat16')
        assert f32 == decoding.stored_loss(model, weights, batches, None)
    assert 0 < f32 and f32 != bf16 and abs(bf16 / f32 - 1) < 5e-3
