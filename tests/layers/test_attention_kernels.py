"""The predict-mode attention kernels == the reference `cached_causal_attention`, both backends.

Kernels: `attend_filled` (concrete position: the cache cut to its filled slots),
`blockwise_cached_causal_attention` with two passes or the online softmax (also
jitted with a traced position), and their dispatcher `cached_attention_step`.
"""
import jax
import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy_parallel
from trax_sparse.layers import attention_core as core

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
        return core.cached_causal_attention(q, k_cache, v_cache, start, key_mask)


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


@pytest.mark.parametrize('two_pass', [True, False])
@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('n_queries', [1, 3])
def test_blockwise_kernels_equal_reference(backend_name, n_queries, masked, two_pass):
    # Blocks of 3 over 11 slots: every block boundary is crossed, the last block is shifted.
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, n_queries, D_HEAD)
    for start in range(0, SLOTS - n_queries + 1):
        got = core.blockwise_cached_causal_attention(q, k_cache, v_cache, start, block_size=3,
                                                     key_mask=key_mask, two_pass=two_pass)
        np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, start, key_mask),
                                   atol=1e-5, err_msg=f'start={start}')


@pytest.mark.parametrize('two_pass', [True, False])
def test_blockwise_kernels_under_jit_with_a_traced_position(two_pass):
    k_cache, v_cache, key_mask = _cache_and_mask(masked=True)
    q = _floats(BATCH, HEADS, 2, D_HEAD)
    with fastmath.use_backend('jax'):
        attend = jax.jit(lambda start: core.blockwise_cached_causal_attention(
            q, k_cache, v_cache, start, block_size=4, key_mask=key_mask, two_pass=two_pass))
        outputs = {start: np.asarray(attend(np.int32(start))) for start in (0, 3, 4, 7, 9)}
    for start, got in outputs.items():
        np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, start, key_mask),
                                   atol=1e-5, err_msg=f'start={start}')


@pytest.mark.parametrize('two_pass', [True, False])
def test_blockwise_kernels_never_read_unfilled_blocks(backend_name, two_pass):
    k_cache, v_cache, _ = _cache_and_mask(masked=False)
    k_cache[:, :, 6:], v_cache[:, :, 6:] = np.nan, np.nan   # blocks 2.. of 3 slots
    q = _floats(BATCH, HEADS, 1, D_HEAD)
    got = core.blockwise_cached_causal_attention(q, k_cache, v_cache, 4, block_size=3,
                                                 two_pass=two_pass)
    np.testing.assert_allclose(got, _reference(q, k_cache[:, :, :5], v_cache[:, :, :5], 4, None),
                               atol=1e-5)


def test_two_pass_is_chosen_only_for_small_score_buffers(monkeypatch):
    k_cache, v_cache, key_mask = _cache_and_mask(masked=True)
    q = _floats(BATCH, HEADS, 3, D_HEAD)
    expected = _reference(q, k_cache, v_cache, 5, key_mask)
    for limit in (0, 1 << 30):     # online, then two passes
        monkeypatch.setattr(core, 'TWO_PASS_MAX_SCORES', limit)
        with fastmath.use_backend('jax'):
            got = core.blockwise_cached_causal_attention(q, k_cache, v_cache, 5, block_size=4,
                                                         key_mask=key_mask)
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('n_queries', [1, 3])
def test_cached_attention_step_concrete_and_traced_agree(n_queries, masked):
    # Under jit: blockwise while the cache is < WHOLE_BUFFER_FILL full, else the whole buffer.
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, n_queries, D_HEAD)
    with fastmath.use_backend('jax'):
        traced = jax.jit(lambda start: core.cached_attention_step(q, k_cache, v_cache, start, 4,
                                                                  key_mask))
        for start in range(0, SLOTS - n_queries + 1):
            concrete = core.cached_attention_step(q, k_cache, v_cache, start, 4, key_mask)
            expected = _reference(q, k_cache, v_cache, start, key_mask)
            np.testing.assert_allclose(concrete, expected, atol=1e-5, err_msg=f'start={start}')
            np.testing.assert_allclose(traced(np.int32(start)), expected, atol=1e-5,
                                       err_msg=f'start={start}')
    with fastmath.use_backend('numpy'):
        got = core.cached_attention_step(q, k_cache, v_cache, 7, 4, key_mask)
    np.testing.assert_allclose(got, _reference(q, k_cache, v_cache, 7, key_mask), atol=1e-5)


@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('n_queries', [1, 3])
def test_attend_filled_by_heads_on_threads_equals_reference(n_queries, masked, monkeypatch):
    # A cache counted as large is read by heads on NumPy's worker threads: the same numbers.
    monkeypatch.setattr(numpy_parallel, 'PARALLEL_GATHER_MIN_BYTES', 0)
    k_cache, v_cache, key_mask = _cache_and_mask(masked)
    q = _floats(BATCH, HEADS, n_queries, D_HEAD)
    with fastmath.use_backend('numpy'):
        for start in (0, 4, SLOTS - n_queries):
            got = core.cached_attention_step(q, k_cache, v_cache, start, 4, key_mask)
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


def test_traced_step_takes_the_whole_buffer_only_when_full_enough(monkeypatch):
    k_cache, v_cache, _ = _cache_and_mask(masked=False)
    q = _floats(BATCH, HEADS, 1, D_HEAD)
    k_cache[:, :, 6:], v_cache[:, :, 6:] = np.nan, np.nan   # read only by the whole buffer
    with fastmath.use_backend('jax'):
        for fill, finite in ((1.0, True), (0.1, False)):
            monkeypatch.setattr(core, 'WHOLE_BUFFER_FILL', fill)
            step = jax.jit(lambda start: core.traced_attention_step(q, k_cache, v_cache, start,
                                                                    3))
            assert np.isfinite(step(np.int32(4))).all() == finite



def test_traced_step_reads_a_one_block_cache_whole():
    # Blockwise would loop over one block (the whole buffer, copied out first): no loop.
    k_cache, v_cache, _ = _cache_and_mask(masked=False)
    q = _floats(BATCH, HEADS, 1, D_HEAD)
    with fastmath.use_backend('jax'):
        for block, loops in ((SLOTS, False), (SLOTS + 5, False), (5, True)):
            step = jax.jit(lambda start: core.traced_attention_step(q, k_cache, v_cache, start,
                                                                    block))
            assert ('while' in step.lower(np.int32(0)).as_text()) == loops, block
            np.testing.assert_allclose(step(np.int32(3)),
                                       _reference(q, k_cache, v_cache, 3, None), atol=1e-5)
