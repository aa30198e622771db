"""Dense attention: predict == eval (both cache read paths), padding, dropout, errors."""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.layers import attention_core as core
from tests import helpers

BATCH, D_MODEL, N_HEADS = 2, 8, 2


def _floats(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _reference_causal_attention(q, k, v, n_heads):
    """Per-example, per-head loops in float64: the textbook definition."""
    batch, length, d = q.shape
    d_h = d // n_heads
    out = np.zeros((batch, length, v.shape[-1] // n_heads * n_heads))
    d_vh = v.shape[-1] // n_heads
    for b in range(batch):
        for h in range(n_heads):
            qh = q[b, :, h * d_h:(h + 1) * d_h].astype(np.float64)
            kh = k[b, :, h * d_h:(h + 1) * d_h].astype(np.float64)
            vh = v[b, :, h * d_vh:(h + 1) * d_vh].astype(np.float64)
            scores = qh @ kh.T / np.sqrt(d_h)
            scores[np.triu_indices(length, 1)] = -np.inf
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[b, :, h * d_vh:(h + 1) * d_vh] = probs @ vh
    return out


def _compiled(layer):
    """layer.pure_fn, jit-compiled on the JAX backend (one compile per shape, cheap)."""
    return jax.jit(layer.pure_fn) if fastmath.is_jax() else layer.pure_fn


def _init_on_numpy(layer, inputs):
    """Weights and state from the NumPy backend (instant); both backends can use them."""
    with fastmath.use_backend('numpy'):
        return layer.init(shapes.signature(inputs))


def _decode(step, inputs, state, prefix: int = 3):
    """Feeds `prefix` positions at once, then one at a time; returns (outputs, state)."""
    length = inputs[0].shape[1]
    pieces = [(0, prefix)] + [(t, t + 1) for t in range(prefix, length)]
    outputs = []
    for start, end in pieces:
        y, state = step(tuple(x[:, start:end] for x in inputs), state)
        outputs.append(np.asarray(y))
    return np.concatenate(outputs, axis=1), state


# ---- DotProductCausalAttention ---------------------------------------------------
def test_dot_product_causal_attention_matches_reference(backend_name):
    q, k, v = _floats(BATCH, 5, 8), _floats(BATCH, 5, 8, seed=1), _floats(BATCH, 5, 4, seed=2)
    layer = tl.DotProductCausalAttention(n_heads=2, mode='eval')
    w, s = layer.init(shapes.signature((q, k, v)))
    y, _ = layer.pure_fn((q, k, v), w, s)
    assert y.shape == (BATCH, 5, 4)
    np.testing.assert_allclose(y, _reference_causal_attention(q, k, v, 2), atol=1e-5)


def test_dot_product_predict_equals_eval_eager_and_jitted(backend_name):
    # max_len 10 slots, all filled in the end: eagerly the filled slots are read, under jit
    # the whole buffer with a mask.
    qkv = (_floats(BATCH, 10, 8), _floats(BATCH, 10, 8, seed=1), _floats(BATCH, 10, 8, seed=2))
    evaluator = tl.DotProductCausalAttention(2, mode='eval')
    expected, _ = evaluator.pure_fn(qkv, *evaluator.init(shapes.signature(qkv)))
    layer = tl.DotProductCausalAttention(2, max_len=10, mode='predict')
    w, s0 = layer.init(shapes.signature(tuple(x[:, :1] for x in qkv)))
    got, s = _decode(lambda x, st: layer.pure_fn(x, w, st), qkv, s0, prefix=4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert int(s[2]) == 10
    if backend_name == 'jax':
        step = jax.jit(layer.pure_fn)  # one compile for the prefix shape, one for a token
        got_jit, s_jit = _decode(lambda x, st: step(x, w, st), qkv, s0, prefix=4)
        np.testing.assert_allclose(got_jit, got, atol=1e-6)
        helpers.assert_trees_close(s_jit, s, atol=1e-6)


def test_numpy_predict_updates_cache_in_place_and_reads_only_the_filled_part():
    with fastmath.use_backend('numpy'):
        qkv = (_floats(BATCH, 4, 8), _floats(BATCH, 4, 8, seed=1), _floats(BATCH, 4, 8, seed=2))
        layer = tl.DotProductCausalAttention(2, max_len=16, mode='predict')
        _, (k_cache, v_cache, pos) = layer.init(shapes.signature(qkv))
        assert k_cache.shape == (BATCH, 2, 16, 4)       # [B, H, max_len, d_h]
        k_cache[:] = np.nan  # slots past pos + L are never read
        v_cache[:] = np.nan
        y, (k_new, v_new, pos_new) = layer.pure_fn(qkv, (), (k_cache, v_cache, pos))
        assert k_new is k_cache and v_new is v_cache and int(pos_new) == 4
        np.testing.assert_array_equal(k_cache[:, :, :4], core.split_heads(qkv[1], 2))
        assert np.isfinite(y).all() and np.isnan(k_cache[:, :, 4:]).all()


# ---- CausalAttention ----------------------------------------------------------------
def test_causal_attention_predict_equals_eval(backend_name):
    x = _floats(BATCH, 7, D_MODEL)
    evaluator = tl.CausalAttention(D_MODEL, N_HEADS, max_len=9, mode='eval')
    w, s = _init_on_numpy(evaluator, x)
    expected, _ = _compiled(evaluator)(x, w, s)
    layer = tl.CausalAttention(D_MODEL, N_HEADS, max_len=9, mode='predict')
    w_predict, s0 = layer.init(shapes.signature(x[:, :1]))
    assert fastmath.tree_structure(w_predict) == fastmath.tree_structure(w)
    run = _compiled(layer)
    step = lambda xs, st: run(xs[0], w, st)  # noqa: E731
    first, _ = _decode(step, (x,), s0)
    np.testing.assert_allclose(first, expected, atol=1e-5)
    again, _ = _decode(step, (x,), s0)  # a second run from the initial state
    np.testing.assert_allclose(again, first, atol=1e-6)
    # (jit == no-jit of the predict core: test_dot_product_predict_crosses_blocks...)


def test_causal_attention_numpy_equals_jax_in_predict():
    x = _floats(BATCH, 5, D_MODEL)
    layer = tl.CausalAttention(D_MODEL, N_HEADS, max_len=6, mode='predict')
    with fastmath.use_backend('numpy'):
        w, s = layer.init(shapes.signature(x[:, :1]))
    outputs = []
    for backend in ('numpy', 'jax'):
        with fastmath.use_backend(backend):
            state = fastmath.tree_map(np.copy, s)  # NumPy writes its cache in place
            outputs.append(_decode(lambda xs, st: layer.pure_fn(xs[0], w, st), (x,), state)[0])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


# ---- EncDecAttention ------------------------------------------------------------------
def test_enc_dec_attention_predict_equals_eval_and_caches_encoder(backend_name):
    x, encoder = _floats(BATCH, 5, D_MODEL), _floats(BATCH, 6, 4, seed=1)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    evaluator = tl.EncDecAttention(D_MODEL, N_HEADS, mode='eval')
    w, s = _init_on_numpy(evaluator, (x, encoder, mask))
    expected, _ = _compiled(evaluator)((x, encoder, mask), w, s)
    layer = tl.EncDecAttention(D_MODEL, N_HEADS, mode='predict')
    _, s0 = layer.init(shapes.signature((x[:, :1], encoder, mask)))
    garbage = np.full_like(encoder, 1e3)

    def run(step):
        # After the first call the encoder input is garbage: the cached K/V must be used.
        ys, state = [], s0
        for t, (start, end) in enumerate([(0, 3), (3, 4), (4, 5)]):
            y, state = step((x[:, start:end], encoder if t == 0 else garbage, mask), w, state)
            ys.append(np.asarray(y))
        return np.concatenate(ys, axis=1)

    got = run(_compiled(layer))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(run(_compiled(layer)), got, atol=1e-6)  # from the initial state
    # On JAX the compiled step takes the fastmath.cond branch; NumPy the Python one.


def test_enc_dec_attention_ignores_padded_encoder_positions(backend_name):
    x, encoder = _floats(BATCH, 3, D_MODEL), _floats(BATCH, 6, D_MODEL, seed=1)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
    layer = tl.EncDecAttention(D_MODEL, N_HEADS, mode='eval')
    w, s = layer.init(shapes.signature((x, encoder, mask)))
    y, _ = layer.pure_fn((x, encoder, mask), w, s)
    changed = np.where(mask[:, :, None], encoder, 50.0).astype(np.float32)
    y_changed, _ = layer.pure_fn((x, changed, mask), w, s)
    np.testing.assert_allclose(y_changed, y, atol=1e-5)


# ---- Attention (bidirectional, padded) ------------------------------------------------
def test_attention_with_padding_equals_unpadded(backend_name):
    lengths = (5, 3)
    x = _floats(BATCH, 5, D_MODEL)
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]
    layer = tl.Attention(D_MODEL, N_HEADS, mode='eval')
    w, s = _init_on_numpy(layer, (x, mask))
    run = _compiled(layer)
    (y, mask_out), _ = run((x, mask), w, s)
    np.testing.assert_array_equal(mask_out, mask)
    for n in lengths:  # row b of the unpadded batch x[:, :n] is example b without padding
        (y_alone, _), _ = run((x[:, :n], np.ones((BATCH, n), bool)), w, s)
        b = lengths.index(n)
        np.testing.assert_allclose(y[b, :n], y_alone[b], atol=1e-5, err_msg=f'example {b}')
    # 0/1 float masks mean the same as bool masks.
    (y_float, _), _ = layer.pure_fn((x, mask.astype(np.float32)), w, s)
    np.testing.assert_allclose(y_float, y, atol=1e-5)


def test_attention_fully_padded_row_is_finite(backend_name):
    x = _floats(BATCH, 4, D_MODEL)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    layer = tl.Attention(D_MODEL, N_HEADS, mode='eval')
    (y, _), _ = layer.pure_fn((x, mask), *layer.init(shapes.signature((x, mask))))
    assert np.isfinite(np.asarray(y)).all()


# ---- dropout ----------------------------------------------------------------------------
def test_attention_dropout_only_in_train_and_follows_the_rng(backend_name):
    qkv = (_floats(BATCH, 5, 8), _floats(BATCH, 5, 8, seed=1), _floats(BATCH, 5, 8, seed=2))
    rng_a, rng_b = np.array([0, 1], np.uint32), np.array([0, 2], np.uint32)
    train = _compiled(tl.DotProductCausalAttention(2, dropout=0.5, mode='train'))
    plain = tl.DotProductCausalAttention(2, mode='eval').pure_fn
    y_a = np.asarray(train(qkv, (), (), rng_a)[0])
    np.testing.assert_allclose(train(qkv, (), (), rng_a)[0], y_a)
    assert np.abs(np.asarray(train(qkv, (), (), rng_b)[0]) - y_a).max() > 1e-3
    y_plain = np.asarray(plain(qkv, (), (), rng_a)[0])
    assert np.abs(y_a - y_plain).max() > 1e-3
    evaluator = tl.DotProductCausalAttention(2, dropout=0.5, mode='eval').pure_fn
    np.testing.assert_allclose(evaluator(qkv, (), (), rng_a)[0], y_plain)
    # The first query sees only key 0: kept -> 2·v0, dropped -> 0, per head.
    v0 = qkv[2][:, 0].reshape(BATCH, 2, 4)
    first = y_a[:, 0].reshape(BATCH, 2, 4)
    for b in range(BATCH):
        for h in range(2):
            assert (np.allclose(first[b, h], 2 * v0[b, h], atol=1e-5)
                    or np.allclose(first[b, h], 0.0))


# ---- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize('make', [
    lambda: tl.CausalAttention(6, n_heads=4),
    lambda: tl.Attention(6, n_heads=4),
    lambda: tl.EncDecAttention(6, n_heads=4),
], ids=['CausalAttention', 'Attention', 'EncDecAttention'])
def test_d_feature_not_divisible_by_heads(make):
    with pytest.raises(ValueError, match='d_feature=6 is not divisible by n_heads=4'):
        make()


def test_dot_product_attention_rejects_indivisible_width():
    with fastmath.use_backend('numpy'):
        x = _floats(BATCH, 3, 6)
        layer = tl.DotProductCausalAttention(n_heads=4)
        with pytest.raises(tl.LayerError, match='DotProductCausalAttention.*d_feature=6 is not '
                                                'divisible by n_heads=4'):
            layer.init(shapes.signature((x, x, x)))


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_predict_cache_overflow_raises(backend):
    x = _floats(BATCH, 3, D_MODEL)
    with fastmath.use_backend(backend):
        layer = tl.CausalAttention(D_MODEL, N_HEADS, max_len=4, mode='predict')
        w, s = layer.init(shapes.signature(x[:, :1]))
        _, s = layer.pure_fn(x, w, s)
        _, s = layer.pure_fn(x[:, :1], w, s)      # position 3: the last slot
        with pytest.raises(tl.LayerError) as error:
            layer.pure_fn(x[:, :1], w, s)
    text = str(error.value)
    assert 'CausalAttention[1]/DotProductCausalAttention' in text
    assert 'predict cache overflow' in text and 'max_len=4' in text


def test_predict_cache_overflow_under_jit_gives_nan():
    x = _floats(BATCH, 3, D_MODEL)
    with fastmath.use_backend('jax'):
        layer = tl.DotProductCausalAttention(N_HEADS, max_len=4, mode='predict')
        _, s = layer.init(shapes.signature((x, x, x)))
        step = jax.jit(layer.pure_fn)
        y, s = step((x, x, x), (), s)
        assert np.isfinite(np.asarray(y)).all()
        y, s = step((x, x, x), (), s)             # 3 + 3 > 4
    assert np.isnan(np.asarray(y)).all() and int(s[2]) == 6


def test_predict_rejects_a_batch_other_than_the_cache():
    with fastmath.use_backend('numpy'):
        x = _floats(BATCH, 1, D_MODEL)
        layer = tl.DotProductCausalAttention(N_HEADS, max_len=4, mode='predict')
        _, s = layer.init(shapes.signature((x, x, x)))
        bigger = _floats(3, 1, D_MODEL)
        with pytest.raises(tl.LayerError, match='do not fit the cache'):
            layer.pure_fn((bigger, bigger, bigger), (), s)


@pytest.mark.parametrize('make, message', [
    (lambda: tl.DotProductCausalAttention(2, mode='decode'), 'mode must be one of'),
    (lambda: tl.DotProductCausalAttention(2, dropout=1.0), 'dropout must be in'),
    (lambda: tl.CausalAttention(4, 2, mode='decode'), 'CausalAttention: mode must be one of'),
    (lambda: tl.Attention(4, 2, dropout=-0.1), 'Attention: dropout must be in'),
    (lambda: tl.EncDecAttention(4, 0), 'n_heads must be >= 1'),
])
def test_bad_hyper_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_attention_rejects_a_mask_of_the_wrong_shape():
    with fastmath.use_backend('numpy'):
        x = _floats(BATCH, 4, D_MODEL)
        layer = tl.Attention(D_MODEL, N_HEADS, mode='eval')
        w, s = layer.init(shapes.signature((x, np.ones((BATCH, 4), bool))))
        with pytest.raises(tl.LayerError, match=r'mask must have shape \[batch, key length\]'):
            layer.pure_fn((x, np.ones((BATCH, 3), bool)), w, s)


# ---- key padding masks in causal attention (used by the Terraformer's joint sequence) ---------
def _left_padded(x, n_pad):
    padded = np.concatenate([np.zeros_like(x[:, :n_pad]), x], axis=1)
    mask = np.ones(padded.shape[:2], bool)
    mask[:, :n_pad] = False
    return padded, mask


def test_masked_causal_attention_ignores_masked_keys(backend_name):
    rng_np = np.random.default_rng(4)
    x = rng_np.normal(size=(2, 5, 8)).astype(np.float32)
    plain = tl.CausalAttention(8, n_heads=2, mode='eval')
    w, s = plain.init(shapes.signature(x))
    expected, _ = plain.pure_fn(x, w, s)
    masked = tl.CausalAttention(8, n_heads=2, masked=True, mode='eval')
    padded, mask = _left_padded(x, 3)
    padded[:, :3] = rng_np.normal(size=(2, 3, 8))           # garbage under the mask
    masked_w = ((), w[0], (), w[2])         # Select, Parallel(q, k, v), core, output Dense
    assert fastmath.tree_structure(masked.init(shapes.signature((padded, mask)))[0]) == \
        fastmath.tree_structure(masked_w)
    (y, mask_out), _ = masked.pure_fn((padded, mask), masked_w, masked.state)
    np.testing.assert_allclose(np.asarray(y)[:, 3:], np.asarray(expected), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask_out), mask)


def test_masked_causal_attention_predict_equals_eval(backend_name):
    rng_np = np.random.default_rng(5)
    x = rng_np.normal(size=(2, 7, 8)).astype(np.float32)
    mask = np.ones((2, 7), bool)
    mask[0, :2] = False                                      # row 0: two padded positions
    mask[1, 4] = False                                       # row 1: a hole later on
    ev = tl.CausalAttention(8, n_heads=2, masked=True, max_len=8, mode='eval')
    pr = tl.CausalAttention(8, n_heads=2, masked=True, max_len=8, mode='predict')
    w, _ = ev.init(shapes.signature((x, mask)))
    (full, _), _ = ev.pure_fn((x, mask), w, ev.state)
    _, state = pr.init(shapes.signature((x[:, :1], mask[:, :1])))
    outs, t = [], 0
    for size in (3, 1, 1, 1, 1):
        (y, _), state = pr.pure_fn((x[:, t:t + size], mask[:, t:t + size]), w, state)
        outs.append(np.asarray(y))
        t += size
    # Compare the positions whose query is real (a padded query's output is not used).
    got = np.concatenate(outs, 1)
    np.testing.assert_allclose(got[mask], np.asarray(full)[mask], atol=1e-5)
