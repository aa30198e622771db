"""LSH attention with the heads in turn (a scan over heads) == all heads at once, NumPy == JAX."""
import dataclasses

import jax
import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse import layers as tl
from trax_sparse.layers.lsh import core as lsh_core
from trax_sparse.layers.lsh.core import LSHSettings
from tests import helpers

B, L, D, H, DK, DV, R, CHUNK = 2, 13, 6, 3, 4, 5, 2, 4
KEY = np.array([0, 9], np.uint32)


def _settings(**overrides):
    base = LSHSettings(layer_name='LSH', n_heads=H, d_qk=DK, n_hashes=R, bucket_factors=(4,),
                       causal=True, chunk_len=CHUNK, n_chunks_before=1, n_chunks_after=0,
                       attention_dropout=0.0, output_dropout=0.2, mem_len=64, budget=16,
                       heads_in_turn=True)
    return dataclasses.replace(base, **overrides)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, L, D)).astype(np.float32)
    weights = (rng.normal(size=(H, D, DK)).astype(np.float32) * 0.5,
               rng.normal(size=(H, D, DV)).astype(np.float32) * 0.5,
               rng.normal(size=(H, DV, D)).astype(np.float32) * 0.5)
    valid = np.ones((B, L), bool)
    valid[1, -3:] = False                                            # padding in one row
    padded = lsh_core.padded_length(L, CHUNK)
    buckets = rng.integers(0, 4, size=(B, H, R, padded)).astype(np.int32)
    return x, valid, weights, buckets


def _all_heads(x, valid, weights, buckets, s):
    """The all-heads-at-once computation (what attend_given_buckets did before)."""
    x_pad, valid_pad = lsh_core._pad_to_chunks(x, valid, s.chunk_len)
    y = lsh_core.lsh_self_attention(x_pad, weights, buckets, valid_pad, s.causal, s.chunk_len,
                                    s.n_chunks_before, s.n_chunks_after, s.attention_dropout,
                                    s.output_dropout, KEY)
    return y[:, :x.shape[1]]


@pytest.mark.parametrize('backend_name', ['numpy', 'jax'])
@pytest.mark.parametrize('causal', [True, False])
def test_output_equals_all_heads_at_once(backend_name, causal):
    s = _settings(causal=causal, n_chunks_after=0 if causal else 1)
    assert lsh_core.heads_in_turn(s)
    x, valid, weights, buckets = _inputs()
    with fastmath.use_backend('numpy'):
        want = _all_heads(x, valid, weights, buckets, s)
    with fastmath.use_backend(backend_name):
        got = lsh_core.attend_given_buckets(x, valid, weights, buckets, KEY, settings=s)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_attention_dropout_keeps_all_heads_at_once():
    assert not lsh_core.heads_in_turn(_settings(heads_in_turn=False))
    assert not tl.LSHSelfAttention(n_heads=2)._settings.heads_in_turn      # the default
    assert tl.LSHSelfAttention(n_heads=2, heads_in_turn=True)._settings.heads_in_turn
    assert not lsh_core.heads_in_turn(_settings(attention_dropout=0.1))
    assert not lsh_core.heads_in_turn(_settings(n_heads=1))


def test_backward_equals_autodiff_of_all_heads_at_once():
    s = _settings()
    x, valid, weights, buckets = _inputs(1)
    grad = np.random.default_rng(2).normal(size=(B, L, D))
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        x64, w64 = helpers.to_float64((x, weights))
        got = jax.jit(lambda x_, w_, g: lsh_core.attend_backward(
            x_, valid, w_, buckets, KEY, g, settings=s))(x64, w64, grad)
        _, pullback = jax.vjp(lambda x_, w_: _all_heads(x_, valid, w_, buckets, s), x64, w64)
        want = pullback(grad)
    helpers.assert_trees_close(got, want, atol=1e-10, rtol=1e-8)
    assert np.abs(np.asarray(got[0])).max() > 1e-3


def test_layer_with_heads_in_turn_equals_the_default_layer_and_its_gradient():
    x = np.random.default_rng(4).normal(size=(1, 11, D)).astype(np.float32)
    kwargs = dict(n_heads=H, d_qk=DK, d_v=DV, causal=True, chunk_len=CHUNK, n_hashes=R,
                  n_buckets=4, output_dropout=0.1, mode='train')
    turns, plain = tl.LSHSelfAttention(heads_in_turn=True, **kwargs), tl.LSHSelfAttention(**kwargs)
    with fastmath.use_backend('numpy'):
        weights, state = plain.init(x, rng=fastmath.random.get_prng(0))
    projection = np.random.default_rng(5).normal(size=x.shape)

    def value_and_grads(layer):
        def loss(params):
            return (layer.pure_fn(params[1], params[0], state, KEY)[0] * projection).sum()
        return jax.jit(jax.value_and_grad(loss))(helpers.to_float64((weights, x)))
    with fastmath.use_backend('jax'), jax.enable_x64(True):
        got, want = value_and_grads(turns), value_and_grads(plain)
    helpers.assert_trees_close(got, want, atol=1e-9, rtol=1e-7)
