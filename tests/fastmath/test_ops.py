"""Backend-neutral helpers: the NumPy implementation equals the JAX one."""
import contextlib

import numpy as np
import pytest

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy_backend, numpy_parallel

rng = np.random.default_rng(0)


def _both(fn):
    out = []
    for name in ('numpy', 'jax'):
        with fastmath.use_backend(name):
            out.append(fastmath.tree_map(np.asarray, fn()))
    return out


def _assert_same(fn, atol=1e-5):
    a, b = _both(fn)
    for x, y in zip(fastmath.tree_leaves(a), fastmath.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


def test_backend_switching():
    with fastmath.use_backend('numpy'):
        assert fastmath.backend_name() == 'numpy'
        assert type(fastmath.numpy.zeros(2)).__module__ == 'numpy'
        with fastmath.use_backend('jax'):
            assert fastmath.backend_name() == 'jax'
            assert 'jax' in type(fastmath.numpy.zeros(2)).__module__
        assert fastmath.backend_name() == 'numpy'


def test_set_backend_and_unknown_name():
    before = fastmath.backend_name()
    try:
        fastmath.set_backend('numpy')
        assert fastmath.backend_name() == 'numpy'
    finally:
        fastmath.set_backend(before)
    with pytest.raises(ValueError, match="unknown fastmath backend 'tf'"):
        fastmath.set_backend('tf')


def test_dynamic_slice_and_update_clamp_like_xla():
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    _assert_same(lambda: fastmath.dynamic_slice(x, (3, 1), (2, 3)))       # start clamped to 2
    _assert_same(lambda: fastmath.dynamic_update_slice(x, np.ones((2, 2), np.float32), (1, 4)))
    out = numpy_backend.dynamic_update_slice(x, np.ones((1, 1), np.float32), (0, 0))
    assert x[0, 0] == 0 and out[0, 0] == 1  # functional: the input is not modified


def test_scan_fori_cond():
    xs = rng.normal(size=(5, 3)).astype(np.float32)
    _assert_same(lambda: fastmath.scan(lambda c, x: (c + x, c * x), np.zeros(3, np.float32), xs))
    _assert_same(lambda: fastmath.scan(lambda c, x: (c + x, c - x), np.ones(3, np.float32), xs,
                                       reverse=True))
    _assert_same(lambda: fastmath.fori_loop(0, 4, lambda i, v: v * 2 + i, np.float32(1)))
    _assert_same(lambda: fastmath.cond(True, lambda a: a + 1, lambda a: a - 1, np.float32(3)))
    _assert_same(lambda: fastmath.cond(False, lambda a: a + 1, lambda a: a - 1, np.float32(3)))


def test_sort_top_k_logsumexp():
    keys = rng.permutation(12).reshape(2, 6).astype(np.int32)
    vals = rng.normal(size=(2, 6)).astype(np.float32)
    _assert_same(lambda: fastmath.sort_key_val(keys, vals))
    x = rng.normal(size=(3, 7)).astype(np.float32)
    _assert_same(lambda: fastmath.top_k(x, 3))
    _assert_same(lambda: fastmath.logsumexp(x, axis=-1))
    _assert_same(lambda: fastmath.logsumexp(np.array([-np.inf, -np.inf], np.float32)))
    _assert_same(lambda: fastmath.erf(x))


@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
@pytest.mark.parametrize('dims,strides', [((5,), (1,)), ((6, 5), (2, 1)), ((4, 5, 3), (1, 2, 1))])
def test_conv_nd(padding, dims, strides):
    x = rng.normal(size=(2,) + dims + (3,)).astype(np.float32)
    kernel = rng.normal(size=tuple(min(3, d) for d in dims) + (3, 4)).astype(np.float32)
    _assert_same(lambda: fastmath.conv(x, kernel, strides, padding), atol=1e-4)


def test_conv_matches_direct_sum():
    x = rng.normal(size=(1, 5, 2)).astype(np.float32)
    k = rng.normal(size=(3, 2, 1)).astype(np.float32)
    with fastmath.use_backend('numpy'):
        y = fastmath.conv(x, k, padding='VALID')
    expected = [sum(x[0, t + i] @ k[i] for i in range(3)) for t in range(3)]
    np.testing.assert_allclose(y[0], np.array(expected), atol=1e-5)


def test_grad_on_numpy_backend_is_a_clear_error():
    with fastmath.use_backend('numpy'):
        for fn in (fastmath.grad, fastmath.value_and_grad, fastmath.vjp, fastmath.custom_vjp):
            with pytest.raises(fastmath.BackendError, match='needs the JAX backend'):
                fn(lambda x: x)(1.0)


def test_grad_jit_remat_on_jax():
    with fastmath.use_backend('jax'):
        f = lambda x: (x ** 3).sum()
        g = fastmath.jit(fastmath.grad(fastmath.remat(f)))(np.array([1.0, 2.0], np.float32))
    np.testing.assert_allclose(np.asarray(g), [3.0, 12.0])


def test_abstract_eval_both_backends():
    from trax_sparse.shapes import ShapeDtype
    sig = ShapeDtype((2, 3), np.float32)
    for name in ('numpy', 'jax'):
        with fastmath.use_backend(name):
            out = fastmath.abstract_eval(lambda x: (x @ np.ones((3, 4), np.float32), x.sum()))(sig)
        assert out == (ShapeDtype((2, 4), np.float32), ShapeDtype((), np.float32))


def test_to_numpy_copies_jax_arrays_into_writable_numpy_memory():
    with fastmath.use_backend('jax'):
        tree = {'w': fastmath.numpy.arange(6.0).reshape(2, 3), 'n': (np.int32(4),)}
        host = fastmath.to_numpy(tree)
    w = host['w']
    assert type(w) is np.ndarray and w.flags['OWNDATA'] and w.flags['WRITEABLE']
    np.testing.assert_array_equal(w, np.arange(6.0).reshape(2, 3))
    w[0, 0] = 7.0                                   # the JAX array is left as it was
    assert float(tree['w'][0, 0]) == 0.0 and host['n'][0] == 4


def _large_if(split: bool, **thresholds):
    """`fastmath.tuned(**thresholds)` with split (thresholds of 0: any work counts as large)."""
    return fastmath.tuned(**thresholds) if split else contextlib.nullcontext()


def _gather_case() -> tuple:
    """table [R, d], rows [T, k], x [T, d], h [T, k]."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 6)).astype(np.float32)
    rows = rng.integers(0, 40, size=(3, 7)).astype(np.int32)
    x, h = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 7)).astype(np.float32)
    return table, rows, x, h


@pytest.mark.parametrize('split', [False, True], ids=['one_part', 'column_parts'])
def test_take_rows_dot_and_weighted_sum_equal_their_formulas(backend_name, split):
    # split: the gathered rows count as large (JAX: 4 separate gathers); the same result.
    table, rows, x, h = _gather_case()
    dots = np.einsum('tkd,td->tk', table[rows], x)
    sums = np.einsum('tk,tkd->td', h, table[rows])
    with fastmath.use_backend(backend_name), _large_if(split, parallel_gather_min_bytes=0):
        np.testing.assert_allclose(fastmath.take_rows_dot(table, rows, x), dots, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(fastmath.take_rows_weighted_sum(table, rows, h), sums,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('split', [False, True], ids=['one_part', 'column_parts'])
def test_in_parts_sum_to_the_whole(backend_name, split):
    # split: the parts count as large, so NumPy runs column ranges on its threads (on the
    # caller's backend; nested calls never wait for the pool); JAX calls fn once (XLA runs
    # the gathers inside concurrently). The sum is the same.
    table, rows, _, h = _gather_case()
    seen = []

    def part(columns):
        seen.append((columns, fastmath.backend_name()))   # worker threads too: the caller's
        inner = lambda c: fastmath.take_rows_weighted_sum(table, rows[:, columns][:, c],
                                                          h[:, columns][:, c])
        width = columns.stop - columns.start
        return sum(fastmath.in_parts(inner, width, 1))                 # nested: never waits

    with fastmath.use_backend(backend_name), _large_if(split, parallel_gather_min_bytes=0):
        got = sum(fastmath.in_parts(part, 7, 1))     # 1 byte: large only when split
        assert len(numpy_parallel.column_slices(7, 1, 4)) == (4 if split else 1)
    np.testing.assert_allclose(got, np.einsum('tk,tkd->td', h, table[rows]), rtol=1e-5,
                               atol=1e-5)
    expected_parts = min(7, fastmath.tuning().threads) if backend_name == 'numpy' else 1
    assert len(seen) == (expected_parts if split else 1)
    assert {name for _, name in seen} == {backend_name}


def test_tuned_threads_set_the_number_of_parts():
    seen = []
    with fastmath.use_backend('numpy'), fastmath.tuned(threads=3, parallel_gather_min_bytes=0):
        fastmath.in_parts(lambda columns: seen.append((columns, fastmath.tuning().threads)), 7, 1)
    assert sorted(columns.start for columns, _ in seen) == [0, 2, 4]          # 7 columns in 3
    assert {threads for _, threads in seen} == {3}       # the workers see the caller's setting


@pytest.mark.parametrize('split', [None, 'parallel_matmul_min_macs', 'parallel_matvec_min_bytes'])
def test_parallel_matmul_equals_matmul(backend_name, split, monkeypatch):
    # split: the product counts as large by its multiply-adds or by b's bytes, so NumPy sums
    # per-thread products over ranges of the contraction; the result is a @ b either way,
    # with a's leading axes kept.
    n_parts = []
    in_parallel = numpy_parallel._in_parallel
    monkeypatch.setattr(numpy_parallel, '_in_parallel',
                        lambda fn, parts: n_parts.append(len(parts)) or in_parallel(fn, parts))
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 1, 3, 7)).astype(np.float32)                 # [..., m, k]
    b = rng.normal(size=(7, 5)).astype(np.float32)                       # [k, n]
    with fastmath.use_backend(backend_name), _large_if(bool(split), **{split or 'threads': 0}):
        got = fastmath.parallel_matmul(a, b)
        assert got.shape == (2, 1, 3, 5)
        np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5)
        # A strided view (as sliced caches and gated inputs are) works as well.
        np.testing.assert_allclose(fastmath.parallel_matmul(a[..., ::2, :], b),
                                   a[..., ::2, :] @ b, rtol=1e-5, atol=1e-5)
    threads = fastmath.tuning().threads
    expected = [threads] * 2 if split and backend_name == 'numpy' and threads > 1 else []
    assert n_parts == expected


@pytest.mark.parametrize('split', [False, True])
def test_parallel_matmuls_equal_matmuls(backend_name, split):
    # split: the total counts as large, so NumPy shares whole products among its threads
    # (largest first, to the least loaded); the results come back in the given order.
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(1, 2, k)).astype(np.float32),
              rng.normal(size=(k, n)).astype(np.float32)) for k, n in ((9, 4), (3, 5), (7, 2))]
    with fastmath.use_backend(backend_name), _large_if(split, parallel_matmuls_min_macs=0):
        got = fastmath.parallel_matmuls(pairs)
    assert [g.shape for g in got] == [(1, 2, 4), (1, 2, 5), (1, 2, 2)]
    for (a, b), product in zip(pairs, got):
        np.testing.assert_allclose(product, a @ b, rtol=1e-5, atol=1e-5)


def test_in_parts_work_in_a_forked_child():
    # The worker pool is per process: a child forked after the parent used it builds its own
    # (a pool inherited through fork has no threads). In a fresh interpreter without JAX,
    # whose threads make fork unsafe.
    import subprocess
    import sys
    code = """
import multiprocessing, sys
import numpy as np
from trax_sparse import fastmath
from trax_sparse.fastmath import numpy_backend
fastmath.set_tuning(parallel_gather_min_bytes=0)
table = np.arange(24, dtype=np.float32).reshape(6, 4)
rows, x = np.array([[0, 5, 2, 3]], np.int32), np.ones((1, 4), np.float32)
expected = table[rows[0]].sum(-1).sum()

def dots(rows, x):
    part = lambda columns: numpy_backend.take_rows_dot(table, rows[:, columns], x).sum()
    return sum(numpy_backend.in_parts(part, rows.shape[1], 10 ** 9))

assert np.allclose(dots(rows, x), expected)
with multiprocessing.get_context('fork').Pool(1) as pool:
    result = pool.apply_async(dots, (rows, x)).get(timeout=60)
assert np.allclose(result, expected) and 'jax' not in sys.modules
print('ok')
"""
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr
