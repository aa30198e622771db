"""fastmath.Tuning: one overridable setting per context; the NumPy backend's BLAS threads."""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy_backend


def test_tuned_overrides_in_a_block_and_nests():
    default = fastmath.tuning()
    with fastmath.tuned(threads=1, blas_threads=None) as outer:
        assert fastmath.tuning() is outer and (outer.threads, outer.blas_threads) == (1, None)
        with fastmath.tuned(conv_patches_max_tokens=0):
            assert fastmath.tuning().threads == 1 and fastmath.tuning().conv_patches_max_tokens == 0
        assert fastmath.tuning() is outer
    assert fastmath.tuning() is default


def test_set_tuning_changes_the_process_default_and_returns_the_old_one():
    old = fastmath.set_tuning(parallel_gather_min_bytes=5)
    try:
        assert fastmath.tuning().parallel_gather_min_bytes == 5
        with fastmath.tuned(parallel_gather_min_bytes=7):
            assert fastmath.tuning().parallel_gather_min_bytes == 7    # a block still wins
    finally:
        fastmath.set_tuning(old)
    assert fastmath.tuning() == old == fastmath.Tuning()


def test_a_tuned_block_holds_in_its_own_thread_only():
    seen, inside, done = {}, threading.Event(), threading.Event()

    def other_thread():
        inside.wait(10)
        seen['other'] = fastmath.tuning().threads
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with fastmath.tuned(threads=3):
        inside.set()
        done.wait(10)
        seen['this'] = fastmath.tuning().threads
    thread.join(10)
    assert seen == {'this': 3, 'other': fastmath.Tuning().threads}


def test_bad_settings_are_errors_naming_the_field():
    with pytest.raises(ValueError, match=r"unknown fastmath.Tuning field\(s\) \['thread'\]"):
        fastmath.tuned(thread=2).__enter__()
    with pytest.raises(ValueError, match='Tuning.threads must be an int >= 1'):
        fastmath.Tuning(threads=0)
    with pytest.raises(ValueError, match='Tuning.blas_threads must be an int >= 1 or None'):
        fastmath.Tuning(blas_threads=0)


def _blas_threads() -> set:
    """The thread counts of the loaded BLAS libraries (NumPy's, and SciPy's once loaded)."""
    return {info['num_threads'] for info in threadpool_info() if info['user_api'] == 'blas'}


@pytest.fixture
def two_blas_threads():
    """The process's BLAS at 2 threads (what it is by default on a 2-core machine)."""
    with threadpool_limits(limits=2, user_api='blas'):
        if _blas_threads() != {2}:
            pytest.skip(f'cannot set BLAS to 2 threads here: {_blas_threads()}')
        yield


def test_numpy_backend_calls_run_with_the_tuned_blas_threads(two_blas_threads, monkeypatch):
    # SparseFF's predict step on NumPy: the row products (a patched op) and the controller's
    # plain matmuls (fastmath.numpy.matmul) see 1 BLAS thread; outside, the process has 2.
    seen = []
    take_rows_dot = numpy_backend.take_rows_dot

    def recording_take_rows_dot(*args):
        seen.append(('take_rows_dot', _blas_threads()))
        return take_rows_dot(*args)

    class Probe:            # an operand of fastmath.numpy.matmul that records the BLAS threads
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            seen.append((ufunc.__name__, _blas_threads()))
            return 0.0

    monkeypatch.setattr(numpy_backend, 'take_rows_dot', recording_take_rows_dot)
    x = np.ones((1, 1, 8), np.float32)
    layer = tl.SparseFF(16, n_elements_in_block=4, mode='predict')
    with fastmath.use_backend('numpy'):
        weights, state = layer.init(shapes.signature(x))
        layer.pure_fn(x, weights, state)
        fastmath.numpy.matmul(Probe(), np.ones(2))
        with fastmath.tuned(blas_threads=None):          # None: BLAS left alone
            fastmath.numpy.matmul(Probe(), np.ones(2))
    assert seen == [('take_rows_dot', {1}), ('matmul', {1}), ('matmul', {2})]
    assert _blas_threads() == {2}                   # restored after each call


def test_blas_threads_are_limited_on_any_thread_and_restored(two_blas_threads):
    seen = []

    def work():
        with fastmath.use_backend('numpy'):
            fastmath.in_parts(lambda columns: seen.append(_blas_threads()), 1, 0)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    with fastmath.blas_scope(), fastmath.blas_scope():    # nested: the outer one restores
        seen.append(_blas_threads())
    seen.append(_blas_threads())
    assert seen == [{1}, {1}, {2}]
