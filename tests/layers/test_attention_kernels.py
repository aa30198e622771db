"""The predict-mode cache reads == the reference `testing.cached_causal_attention`, both backends.

Two paths: the filled slots (`attend_filled` with a concrete position: the cache cut to
them; `filled_blocks_attention` under jit) and `whole_buffer_attention` (under jit: all
slots, masked), and their dispatcher `cached_attention_step`.
"""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse.layers import attention_core as core
from trax_sparse.testing import cached_causal_attention

BATCH, HEADS, SLOTS, D_HEAD, D_VALUE = 2, 3, 11, 4, 5


def _floats(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cache_and_mask(masked: bool) -> tuple:
    """k [B, H, N, d_h], v [B, H, N, d_v], key mask [B, N] or None (key 0 always real)."""
    k_cache, v_cache = _floats(BATCH, HEADS, SLOTS, D_HEAD, seed=1), _floats(
        BATCH, HEADS, SLOTS, D_VALUE, seed=2)
    if not masked:
        return k_cache, v_cache, None
    key_mask = np.random.default_rng(3).random((BATCH, SLOTS)) < 0.6
    key_mask[:, 0] = True
    return k_cache, v_cache, key_mask


def _reference(q, k_cache, v_cache, start, key_mask):
    with fastmath.use_backend('numpy'):
        return cached_causal_attention(q, k_cache, v_cache, start, key_mask)


@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('n_queries', [1, 3])
def test_attend_filled_equals_reference(backend_name, n_queries, masked):
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, n_queries, D_HEAD)
    for start in range(0, SLOTS - n_queries + 1):
        end = start + n_queries
        got = core.attend_filled(q, k_cache[:, :, :end], v_cache[:, :, :end], start,
                                 None if key_mask is None else key_mask[:, :end])
        np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, start, key_mask),
                                   atol=1e-5, err_msg=f'start={start}')


@pytest.mark.parametrize('masked', [False, True])
def test_whole_buffer_attention_equals_reference(backend_name, masked):
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, 2, D_HEAD)
    for start in range(0, SLOTS - 1):
        got = core.whole_buffer_attention(q, k_cache, v_cache, start, key_mask)
        np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, start, key_mask),
                                   atol=1e-5, err_msg=f'start={start}')


@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('n_queries', [1, 3])
@pytest.mark.parametrize('jit_path', [dict(), dict(attention_block_slots=4),
                                      dict(attention_block_slots=4,
                                           attention_whole_buffer_percent=0)],
                         ids=['one_block_whole', 'filled_blocks', 'whole_by_fill'])
def test_cached_attention_step_concrete_and_traced_agree(n_queries, masked, jit_path):
    # Concrete position: the filled slots; under jit (traced position): the whole buffer of
    # a one-block cache, else the filled blocks (4 slots: the last one shifted left), or the
    # whole buffer again from attention_whole_buffer_percent of fill (0: always).
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, n_queries, D_HEAD)
    with fastmath.use_backend('jax'), fastmath.tuned(**jit_path):
        traced = jax.jit(lambda start: core.cached_attention_step(q, k_cache, v_cache, start,
                                                                  key_mask))
        for start in range(0, SLOTS - n_queries + 1):
            concrete = core.cached_attention_step(q, k_cache, v_cache, start, key_mask)
            expected = _reference(q, k_cache, v_cache, start, key_mask)
            np.testing.assert_allclose(concrete, expected, atol=1e-5, err_msg=f'start={start}')
            np.testing.assert_allclose(traced(np.int32(start)), expected, atol=1e-5,
                                       err_msg=f'start={start}')
    with fastmath.use_backend('numpy'):
        got = core.cached_attention_step(q, k_cache, v_cache, 7, key_mask)
    np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, 7, key_mask), atol=1e-5)


def test_a_concrete_step_never_reads_unfilled_slots(backend_name):
    k_cache, v_cache, _ = _cache_and_mask(masked=False)
    k_cache[:, :, 5:], v_cache[:, :, 5:] = np.nan, np.nan
    q = _floats(BATCH, HEADS, 1, D_HEAD)
    got = core.cached_attention_step(q, k_cache, v_cache, 4)
    np.testing.assert_allclose(got, _reference(q, k_cache[:, :, :5], v_cache[:, :, :5], 4, None),
                               atol=1e-5)


def test_a_jitted_step_of_a_little_filled_cache_reads_only_the_filled_blocks():
    k_cache, v_cache, _ = _cache_and_mask(masked=False)
    k_cache[:, :, 4:], v_cache[:, :, 4:] = np.nan, np.nan     # beyond block 0 (slots 0-3)
    q = _floats(BATCH, HEADS, 1, D_HEAD)
    with fastmath.use_backend('jax'), fastmath.tuned(attention_block_slots=4):
        step = jax.jit(lambda start: core.cached_attention_step(q, k_cache, v_cache, start))
        assert 'while' in step.lower(np.int32(0)).as_text()
        got = step(np.int32(2))                     # 3 of 11 slots filled (< 40%): 1 block
    np.testing.assert_allclose(got, _reference(q, k_cache[:, :, :3], v_cache[:, :, :3], 2, None),
                               atol=1e-5)


def test_a_jitted_step_reads_the_whole_buffer_without_a_loop():
    k_cache, v_cache, _ = _cache_and_mask(masked=False)
    q = _floats(BATCH, HEADS, 1, D_HEAD)
    with fastmath.use_backend('jax'):
        step = jax.jit(lambda start: core.cached_attention_step(q, k_cache, v_cache, start))
        assert 'while' not in step.lower(np.int32(0)).as_text()
        np.testing.assert_allclose(step(np.int32(3)), _reference(q, k_cache, v_cache, 3, None),
                                   atol=1e-5)


@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('n_queries', [1, 3])
def test_attend_filled_by_heads_on_threads_equals_reference(n_queries, masked):
    # A cache counted as large is read by heads on NumPy's worker threads: the same numbers.
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, n_queries, D_HEAD)
    with fastmath.use_backend('numpy'), fastmath.tuned(parallel_gather_min_bytes=0):
        for start in (0, 4, SLOTS - n_queries):
            got = core.cached_attention_step(q, k_cache, v_cache, start, key_mask)
            np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, start, key_mask),
                                       atol=1e-5, err_msg=f'start={start}')
