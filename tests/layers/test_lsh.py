"""LSHSelfAttention: equivalences, the reference oracle, gradients, predict mode, errors.

Weights are initialized once on NumPy and reused on JAX (a JAX init compiles
its random draws); JAX runs use the layer's internally compiled functions.
"""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.layers.lsh import core as lsh_core, hashing as lsh_hashing
from tests.layers.lsh_reference import lsh_attention_reference
from tests import helpers

D_MODEL, N_HEADS, D_QK, D_V = 6, 2, 3, 4
KEY = np.array([0, 7], np.uint32)


def _floats(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _layer(mode='eval', **kwargs):
    settings = dict(n_heads=N_HEADS, d_qk=D_QK, d_v=D_V, chunk_len=4, n_hashes=2, n_buckets=4)
    settings.update(kwargs)
    return tl.LSHSelfAttention(mode=mode, **settings)


def _init(layer, inputs):
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(inputs), rng=fastmath.random.get_prng(0))


def _rotations(key, n_hashes=2, n_buckets=4):
    with fastmath.use_backend('numpy'):
        return lsh_hashing.hash_rotations(key, N_HEADS, D_QK, n_hashes, n_buckets)


def full_causal_shared_qk_attention(x, weights):
    """Dense causal attention with shared QK (keys = unit queries), self only as a fallback."""
    w_qk, w_v, w_o = (np.asarray(w, np.float64) for w in weights)
    x = np.asarray(x, np.float64)
    qk = np.einsum('bld,hdk->bhlk', x, w_qk)
    v = np.einsum('bld,hdk->bhlk', x, w_v)
    keys = qk / np.sqrt((qk ** 2).sum(-1, keepdims=True) + qk.shape[-1] * 1e-6)
    scores = qk @ np.swapaxes(keys, -1, -2)                               # [B, H, L, L]
    length = x.shape[1]
    scores = np.where(np.eye(length, dtype=bool), -1e5, scores)
    scores = np.where(np.triu(np.ones((length, length), bool), 1), -1e9, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum('bhlv,hvd->bld', probs @ v, w_o)


# ---- semantics --------------------------------------------------------------------------------
def test_one_chunk_equals_full_causal_attention_whatever_the_hash(backend_name):
    x = _floats(2, 8, D_MODEL)
    layer = _layer(causal=True, chunk_len=8, n_chunks_before=0, n_hashes=2, n_buckets=8)
    weights, state = _init(layer, x)
    expected = full_causal_shared_qk_attention(x, weights)
    bucket_sets = []
    for seed in (1, 2, 3):
        y, buckets = layer.pure_fn(x, weights, state, np.array([0, seed], np.uint32))
        np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
        bucket_sets.append(np.asarray(buckets))
    assert not np.array_equal(bucket_sets[0], bucket_sets[1])   # the hashes really differ


def test_rounds_are_a_convex_combination_of_per_round_outputs(backend_name):
    rng = np.random.default_rng(0)
    qk, v = _floats(2, 2, 16, 3), _floats(2, 2, 16, 4, seed=1)
    buckets = rng.integers(0, 4, size=(2, 2, 3, 16)).astype(np.int32)    # 3 rounds, 4 chunks
    valid = np.ones((2, 16), bool)

    def rounds(buckets_):
        return lsh_core.lsh_attention_rounds(qk, v, buckets_, valid, True, 4)
    rounds = fastmath.jit(rounds)
    o_rounds, lse = rounds(buckets)
    o, weights = lsh_core.combine_rounds(o_rounds, lse)
    weights, o_rounds, o = np.asarray(weights), np.asarray(o_rounds), np.asarray(o)
    assert weights.min() >= 0
    np.testing.assert_allclose(weights.sum(axis=2), 1.0, atol=1e-6)
    np.testing.assert_allclose(o, (weights[..., None] * o_rounds).sum(axis=2), atol=1e-6)
    for r in range(3):   # each round's output is that round attending on its own
        alone, _ = rounds(buckets[:, :, r:r + 1])
        np.testing.assert_allclose(o_rounds[:, :, r], np.asarray(alone)[:, :, 0], atol=1e-6)
    assert np.abs(o_rounds[:, :, 0] - o_rounds[:, :, 1]).max() > 1e-3   # rounds differ


def test_any_length_without_reinit_equals_reference(backend_name):
    layer = _layer(causal=True, n_chunks_before=1, n_hashes=2)
    weights, state = _init(layer, _floats(2, 16, D_MODEL))
    for length in (16, 6):   # 6 is padded internally to 8
        x = _floats(2, length, D_MODEL, seed=length)
        y, buckets = layer.pure_fn(x, weights, state, KEY)
        padded = -(-length // 4) * 4
        assert buckets.shape == (2, N_HEADS, 2 * padded) and buckets.dtype == np.int32
        expected = lsh_attention_reference(x, weights, _rotations(KEY), causal=True, chunk_len=4)
        np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('settings', [
    dict(causal=False, masked=True, n_chunks_after=1, n_hashes=3, n_buckets=6),
    dict(causal=True, chunk_len=3, n_chunks_before=2, n_hashes=1, n_buckets=2),
], ids=['masked_lookahead_3rounds', 'causal_2before'])
def test_fast_path_equals_reference(settings):
    x = _floats(2, 12, D_MODEL)
    mask = np.ones((2, 12), bool)
    mask[1, 9:] = False
    masked = settings.get('masked', False)
    inputs = (x, mask) if masked else x
    layer = _layer(**settings)
    weights, state = _init(layer, inputs)
    with fastmath.use_backend('numpy'):
        y, _ = layer.pure_fn(inputs, weights, state, KEY)
    if masked:
        y, mask_out = y
        np.testing.assert_array_equal(mask_out, mask)   # the mask passes through
    rotations = _rotations(KEY, settings['n_hashes'], settings['n_buckets'])
    expected = lsh_attention_reference(
        x, weights, rotations, mask if masked else None, causal=settings['causal'],
        chunk_len=settings.get('chunk_len', 4), n_chunks_before=settings.get('n_chunks_before', 1),
        n_chunks_after=settings.get('n_chunks_after', 0))
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_masked_keys_are_ignored():
    x, mask = _floats(2, 8, D_MODEL), np.array([[1] * 8, [1] * 5 + [0] * 3], np.float32)
    layer = _layer(masked=True, causal=False)
    weights, state = _init(layer, (x, mask))
    changed = x.copy()
    changed[1, 5:] += 10.0   # only masked-out positions change
    with fastmath.use_backend('numpy'):
        (y, _), _ = layer.pure_fn((x, mask), weights, state, KEY)
        (y_changed, _), _ = layer.pure_fn((changed, mask), weights, state, KEY)
    np.testing.assert_allclose(y_changed[1, :5], y[1, :5], atol=1e-6)
    np.testing.assert_allclose(y_changed[0], y[0], atol=1e-6)


def test_rotations_are_portable_standard_normal():
    with fastmath.use_backend('numpy'):
        r_np = lsh_hashing.hash_rotations(KEY, 4, 16, 2, 64)
        other = lsh_hashing.hash_rotations(np.array([0, 8], np.uint32), 4, 16, 2, 64)
    with fastmath.use_backend('jax'):
        r_jit = jax.jit(lambda k: lsh_hashing.hash_rotations(k, 4, 16, 2, 64))(KEY)
    np.testing.assert_allclose(r_np, r_jit, atol=1e-5)   # same key, same rotations
    assert r_np.shape == (4, 16, 2, 32) and r_np.dtype == np.float32
    assert abs(r_np.mean()) < 0.05 and abs(r_np.std() - 1.0) < 0.05   # 4096 samples
    assert np.abs(r_np - other).max() > 1.0


def test_replay_reuses_buckets_from_state():
    x = _floats(2, 16, D_MODEL)
    layer = _layer(causal=True, n_buckets=8)
    weights, state = _init(layer, x)
    with fastmath.use_backend('numpy'):
        y1, buckets1 = layer.pure_fn(x, weights, state, KEY)
        y2, buckets2 = layer.pure_fn(x, weights, state, np.array([0, 99], np.uint32))
        assert not np.array_equal(buckets1, buckets2)
        with tl.replay_context():
            y_replayed, buckets_replayed = layer.pure_fn(x, weights, buckets1,
                                                         np.array([0, 99], np.uint32))
            with pytest.raises(tl.LayerError, match='replaying needs the buckets'):
                layer.pure_fn(x[:, :4], weights, buckets1, KEY)
    np.testing.assert_array_equal(buckets_replayed, buckets1)
    np.testing.assert_allclose(y_replayed, y1, atol=1e-6)
    assert np.abs(y2 - y1).max() > 1e-4


def test_dropout_only_in_train():
    x = _floats(2, 8, D_MODEL)
    train = _layer('train', causal=True, attention_dropout=0.5, output_dropout=0.3)
    weights, state = _init(train, x)
    evaluate = _layer('eval', causal=True, attention_dropout=0.5, output_dropout=0.3)
    plain = _layer('train', causal=True)
    with fastmath.use_backend('numpy'):
        y_train, _ = train.pure_fn(x, weights, state, KEY)
        y_again, _ = train.pure_fn(x, weights, state, KEY)
        y_eval, _ = evaluate.pure_fn(x, weights, state, KEY)
        y_plain, _ = plain.pure_fn(x, weights, state, KEY)
    with fastmath.use_backend('jax'):
        y_train_jax, _ = train.pure_fn(x, weights, state, KEY)
    np.testing.assert_allclose(y_train_jax, y_train, atol=1e-5)   # same masks on both backends
    np.testing.assert_array_equal(y_train, y_again)        # the masks come from the rng
    np.testing.assert_allclose(y_eval, y_plain, atol=1e-6)
    assert np.abs(y_train - y_eval).max() > 1e-3
    assert 0.2 < np.mean(y_train == 0) < 0.4                # output dropout, rate 0.3


# ---- gradients (JAX, float64) -----------------------------------------------------------------
def _projected_loss(layer, x, state, masked=False, mask=None):
    projection = np.random.default_rng(5).normal(size=x.shape)

    def loss(params):
        weights, x_ = params
        y, _ = layer.pure_fn((x_, mask) if masked else x_, weights, state, KEY)
        return ((y[0] if masked else y) * projection).sum()
    return loss


def test_custom_gradient_finite_differences():
    # The registry checks 2 rounds; here 3 rounds, 2 chunks back and a padded length.
    x = _floats(2, 7, D_MODEL)
    layer = _layer(causal=True, chunk_len=2, n_chunks_before=2, n_hashes=3)
    weights, state = _init(layer, x)
    assert layer.has_backward
    probed = helpers.check_grads_fd(_projected_loss(layer, x, state), (weights, x), n_probes=4)
    assert probed == 16


def test_custom_gradient_equals_autodiff_with_fixed_buckets_and_dropout():
    # Train mode: the recompute must reproduce the dropout masks (same rng) and the buckets.
    x = _floats(2, 16, D_MODEL)
    layer = _layer('train', causal=True, n_hashes=2, attention_dropout=0.2, output_dropout=0.1)
    weights, state = _init(layer, x)
    with fastmath.use_backend('numpy'):
        _, buckets = layer.pure_fn(x, weights, state, KEY)
    projection = np.random.default_rng(5).normal(size=x.shape)

    def plain_loss(params):   # plain autodiff through the whole forward, the same buckets
        w, x_ = params
        y = lsh_core.attend_given_buckets(x_, np.ones((2, 16), bool), w,
                                          buckets.reshape(2, N_HEADS, 2, 16), KEY,
                                          settings=layer._settings)
        return (y * projection).sum()
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        params = helpers.to_float64((weights, x))
        with tl.replay_context():   # the layer reads the buckets from its state
            custom = jax.jit(jax.grad(_projected_loss(layer, x, buckets)))(params)
        plain = jax.jit(jax.grad(plain_loss))(params)
    helpers.assert_trees_close(custom, plain, atol=1e-10, rtol=1e-7)
    assert np.abs(np.asarray(custom[1])).max() > 1e-3


# ---- predict ----------------------------------------------------------------------------------
def _decode(layer, weights, x, prefix, key=KEY, step=None):
    """Feeds x[:, :prefix] at once, then one token at a time; returns outputs and final state."""
    with fastmath.use_backend('numpy'):
        _, cache = layer.init(shapes.signature(x[:, :1]), rng=fastmath.random.get_prng(0))
    step = step or layer.pure_fn
    outputs = []
    y, cache = step(x[:, :prefix], weights, cache, key)
    outputs.append(np.asarray(y))
    for t in range(prefix, x.shape[1]):
        y, cache = step(x[:, t:t + 1], weights, cache, key)
        outputs.append(np.asarray(y))
    return np.concatenate(outputs, axis=1), cache


# Chunks and the default budget cover the sequence: predict == eval.
COVERING = dict(causal=True, chunk_len=8, n_hashes=2, n_buckets=4, predict_mem_len=8)


def test_predict_equals_eval_token_by_token(backend_name):
    x = _floats(2, 7, D_MODEL)
    settings = COVERING
    evaluate = _layer('eval', **settings)
    weights, state = _init(evaluate, x)
    full, _ = evaluate.pure_fn(x, weights, state, KEY)
    decoded, cache = _decode(_layer('predict', **settings), weights, x, prefix=3)
    np.testing.assert_allclose(decoded, full, atol=1e-5, rtol=1e-5)
    keys, values, buckets, rotations, pos = cache
    # Stored as bucket + 1: 0 marks an empty slot (every predict state starts at zero).
    assert int(pos) == 7 and np.all(np.asarray(buckets)[..., :7] >= 1)
    assert np.all(np.asarray(buckets)[..., 7:] == 0)


def test_predict_under_jit_prefix_then_steps_then_several_tokens():
    x = _floats(2, 6, D_MODEL)
    settings = dict(causal=True, chunk_len=8, n_hashes=2, n_buckets=4, predict_mem_len=6)
    evaluate = _layer('eval', **settings)
    weights, state = _init(evaluate, x)
    with fastmath.use_backend('numpy'):
        full, _ = evaluate.pure_fn(x, weights, state, KEY)
    layer = _layer('predict', **settings)
    # Calls of 2, 1, 1, 2 tokens: the second 2-token call comes after the start and is
    # decoded token by token (under jit: the same compiled call as the prefix, other branch).
    calls = [slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 6)]
    for backend, step in [('numpy', layer.pure_fn), ('jax', jax.jit(layer.pure_fn))]:
        with fastmath.use_backend(backend):
            _, cache = _init(layer, x[:, :1])
            outputs = []
            for call in calls:
                y, cache = step(x[:, call], weights, cache, KEY)
                outputs.append(np.asarray(y))
            np.testing.assert_allclose(np.concatenate(outputs, 1), full, atol=1e-5, rtol=1e-5,
                                       err_msg=backend)
    with fastmath.use_backend('jax'):
        overflow, _ = step(x[:, :1], weights, cache, KEY)   # 6 + 1 > predict_mem_len
    assert np.all(np.isnan(np.asarray(overflow)))          # under jit: NaN instead of an error


def test_predict_decoding_rule_with_small_budget(backend_name):
    budget, mem_len, prefix = 3, 12, 2
    x = _floats(2, 10, D_MODEL, seed=3)
    layer = _layer('predict', causal=True, n_hashes=2, n_buckets=4, predict_mem_len=mem_len,
                   predict_budget=budget)
    weights, _ = _init(layer, x[:, :1])
    decoded, cache = _decode(layer, weights, x, prefix=prefix)
    w_qk, w_v, w_o = (np.asarray(w, np.float64) for w in weights)
    keys, values, buckets = (np.asarray(a, np.float64) for a in cache[:3])
    queries = np.einsum('bld,hdk->bhlk', x.astype(np.float64), w_qk)
    n_excluded = 0
    for p in range(prefix, x.shape[1]):
        for b in range(2):
            y = np.zeros(D_MODEL)
            for h in range(N_HEADS):
                shares = (buckets[b, h, :, :p + 1] == buckets[b, h, :, p:p + 1]).any(axis=0)
                priority = np.arange(p + 1) + mem_len * shares
                chosen = np.sort(np.argsort(-priority)[:budget])   # the rule, written plainly
                n_excluded += (p + 1 - len(chosen)) * (h == 0)
                scores = keys[b, h, chosen] @ queries[b, h, p]
                scores[chosen == p] = -1e5
                probs = np.exp(scores - scores.max())
                y += (probs / probs.sum()) @ values[b, h, chosen] @ w_o[h]
            np.testing.assert_allclose(decoded[b, p], y, atol=1e-5, rtol=1e-5,
                                       err_msg=f'position {p}, example {b}')
    assert n_excluded > 0     # the budget really cut some positions out


def test_masked_predict_equals_eval_on_real_tokens():
    x, mask = _floats(2, 6, D_MODEL), np.array([[1] * 6, [1, 1, 0, 1, 0, 1]], bool)
    settings = dict(causal=True, masked=True, chunk_len=8, predict_mem_len=8)
    evaluate = _layer('eval', **settings)
    weights, state = _init(evaluate, (x, mask))
    layer = _layer('predict', **settings)
    with fastmath.use_backend('numpy'):
        (full, _), _ = evaluate.pure_fn((x, mask), weights, state, KEY)
        _, cache = layer.init(shapes.signature((x[:, :1], mask[:, :1])))
        (first, _), cache = layer.pure_fn((x[:, :2], mask[:, :2]), weights, cache, KEY)
        steps = [first]
        for t in range(2, 6):
            (y, _), cache = layer.pure_fn((x[:, t:t + 1], mask[:, t:t + 1]), weights, cache, KEY)
            steps.append(y)
    decoded = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(decoded[mask], full[mask], atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(cache[2])[1, :, :, [2, 4]] == 0)    # masked: stored as empty (0)


# ---- errors -----------------------------------------------------------------------------------
def test_length_not_multiple_of_chunk_len_without_padding(backend_name):
    layer = _layer(chunk_len=4, pad_to_chunk=False)
    weights, state = _init(layer, _floats(2, 8, D_MODEL))
    with pytest.raises(tl.LayerError, match=r'sequence length 6 is not a multiple of '
                                            r'chunk_len=4 \(pad_to_chunk=False\)'):
        layer.pure_fn(_floats(2, 6, D_MODEL), weights, state, KEY)


@pytest.mark.parametrize('n_buckets', [5, 0])
def test_odd_n_buckets(n_buckets):
    with pytest.raises(ValueError, match=f'n_buckets must be None, an even number >= 2.*got '
                                         f'{n_buckets}'):
        tl.LSHSelfAttention(n_buckets=n_buckets)


def test_predict_needs_causal():
    with pytest.raises(ValueError, match='predict mode decodes left to right and needs '
                                         'causal=True'):
        tl.LSHSelfAttention(causal=False, mode='predict')


def test_predict_cache_overflow(backend_name):
    x = _floats(2, 9, D_MODEL)
    layer = _layer('predict', **COVERING)    # predict_mem_len=8
    weights, cache = _init(layer, x[:, :1])
    _, cache = layer.pure_fn(x[:, :3], weights, cache, KEY)
    for t in range(3, 8):
        _, cache = layer.pure_fn(x[:, t:t + 1], weights, cache, KEY)
    with pytest.raises(tl.LayerError, match=r'predict cache overflow: 8 cached positions \+ 1 '
                                            r'new tokens > predict_mem_len=8'):
        layer.pure_fn(x[:, 8:9], weights, cache, KEY)
    with pytest.raises(tl.LayerError, match='predict cache overflow'):
        layer.pure_fn(x, weights, _init(layer, x[:, :1])[1], KEY)   # a prefix longer than M


def test_bad_hyper_parameters_and_inputs():
    for kwargs, message in [(dict(chunk_len=0), 'chunk_len must be >= 1'),
                            (dict(n_chunks_before=-1), 'n_chunks_before must be >= 0'),
                            (dict(attention_dropout=1.0), r'attention_dropout must be in \[0, 1\)'),
                            (dict(predict_budget=0), 'predict_budget must be >= 1'),
                            (dict(mode='infer'), 'mode must be one of')]:
        with pytest.raises(ValueError, match=message):
            tl.LSHSelfAttention(**kwargs)
    layer = _layer(masked=True)
    x, mask = _floats(2, 8, D_MODEL), np.ones((2, 8), bool)
    weights, state = _init(layer, (x, mask))
    with fastmath.use_backend('numpy'):
        with pytest.raises(tl.LayerError, match=r'the mask must have shape \[batch, length\] = '
                                                r'\(2, 8\), got \(2, 7\)'):
            layer.pure_fn((x, mask[:, :7]), weights, state, KEY)
        with pytest.raises(tl.LayerError, match='was initialized for d_model=6'):
            layer.pure_fn((_floats(2, 8, 5), mask), weights, state, KEY)


def test_factorized_buckets_combine_one_argmax_per_factor(backend_name):
    from trax_sparse.layers.lsh.hashing import hash_rotations, hash_vectors
    vectors = np.random.default_rng(5).normal(size=(1, 2, 9, 4)).astype(np.float32)
    rotations = hash_rotations(np.array([0, 3], np.uint32), 2, 4, 2, (4, 6))   # [2, 4, 2, 5]
    assert rotations.shape == (2, 4, 2, 5)
    got = np.asarray(hash_vectors(vectors, rotations, (4, 6)))
    rot = np.asarray(rotations)
    first = np.asarray(hash_vectors(vectors, rot[..., :2]))          # factor 4: 2 directions
    second = np.asarray(hash_vectors(vectors, rot[..., 2:]))         # factor 6: 3 directions
    np.testing.assert_array_equal(got, first + 4 * second)
    assert got.min() >= 0 and got.max() < 24


def test_n_buckets_from_the_length_and_as_factors():
    from trax_sparse.layers.lsh.hashing import bucket_factors, check_n_buckets
    assert bucket_factors(None, 64, 8) == (16,)
    assert bucket_factors(None, 4096, 8) == (32, 32)                 # 1024 > 128: factorized
    assert bucket_factors((4, 6), 4096, 8) == (4, 6)
    assert check_n_buckets('L', [8, 4]) == (8, 4) and check_n_buckets('L', None) is None
    for bad in (3, [4, 5], 0, []):
        with pytest.raises(ValueError, match='n_buckets must be None, an even number'):
            check_n_buckets('L', bad)


@pytest.mark.parametrize('n_buckets, total', [(None, 2), ([2, 2], 4)],
                         ids=['from_length', 'factorized'])
def test_lsh_with_automatic_or_factorized_buckets_predict_equals_eval(n_buckets, total,
                                                                      backend_name):
    x = _floats(2, 7, D_MODEL)
    settings = dict(COVERING, n_buckets=n_buckets)
    evaluate = _layer('eval', **settings)
    weights, state = _init(evaluate, x)
    full, buckets = evaluate.pure_fn(x, weights, state, KEY)
    # Length 7 pads to one chunk of 8: None gives 2·8/8 = 2 buckets; the padding position
    # gets the extra bucket `total`.
    assert int(np.asarray(buckets).max()) == total
    decoded, _ = _decode(_layer('predict', **settings), weights, x, prefix=3)
    np.testing.assert_allclose(decoded, full, atol=1e-5, rtol=1e-5)
