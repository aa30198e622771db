"""Data-stack semantics of every combinator, on both backends (n_in/n_out and values)."""
import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl

A = np.array([1.0, 2.0], np.float32)
B = np.array([10.0, 20.0], np.float32)
C = np.array([100.0, 200.0], np.float32)
Inc = lambda: tl.Fn('Inc', lambda x: x + 1)                 # noqa: E731
Sum = lambda: tl.Fn('Sum', lambda a, b: a + b)               # noqa: E731
Split = lambda: tl.Fn('Split', lambda x: (x, -x), n_out=2)   # noqa: E731


def _values(y):
    return [np.asarray(v) for v in (y if isinstance(y, tuple) else (y,))]


def _check(layer, inputs, n_in, n_out, expected):
    assert (layer.n_in, layer.n_out) == (n_in, n_out)
    got = _values(layer(inputs))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e)


def test_serial_stack_arity_and_values(backend_name):
    _check(tl.Serial(Sum(), Inc()), (A, B), 2, 1, [A + B + 1])
    _check(tl.Serial(Inc(), Sum()), (A, B), 2, 1, [A + 1 + B])
    _check(tl.Serial(Split(), Sum()), A, 1, 1, [A * 0])
    _check(tl.Serial(Sum(), Sum()), (A, B, C), 3, 1, [A + B + C])
    _check(tl.Serial(tl.Dup(), Sum()), A, 1, 1, [2 * A])
    _check(tl.Serial(), A, 1, 1, [A])                                  # empty = identity
    _check(tl.Serial([Inc(), [Inc(), None]]), A, 1, 1, [A + 2])        # nested lists flatten
    # Items below what a sublayer touches stay on the stack for later sublayers.
    _check(tl.Serial(Inc(), tl.Swap(), Inc()), (A, B), 2, 2, [B + 1, A + 1])


def test_parallel_splits_inputs(backend_name):
    _check(tl.Parallel(Inc(), Sum()), (A, B, C), 3, 2, [A + 1, B + C])
    _check(tl.Parallel(None, Inc()), (A, B), 2, 2, [A, B + 1])
    _check(tl.Parallel(Split(), Inc()), (A, B), 2, 3, [A, -A, B + 1])


def test_branch_copies_top_inputs(backend_name):
    _check(tl.Branch(Inc(), None, Sum()), (A, B), 2, 3, [A + 1, A, A + B])
    _check(tl.Branch(None, Split()), A, 1, 3, [A, A, -A])


def test_select_dup_swap_drop(backend_name):
    _check(tl.Select([2, 0, 0]), (A, B, C), 3, 3, [C, A, A])
    _check(tl.Select([0], n_in=2), (A, B), 2, 1, [A])
    _check(tl.Dup(), A, 1, 2, [A, A])
    _check(tl.Swap(), (A, B), 2, 2, [B, A])
    _check(tl.Serial(tl.Drop(), Inc()), (A, B), 2, 1, [B + 1])
    assert (tl.Drop().n_in, tl.Drop().n_out) == (1, 0)


def test_residual(backend_name):
    _check(tl.Residual(Inc()), A, 1, 1, [2 * A + 1])
    _check(tl.Residual(Inc(), shortcut=Inc()), A, 1, 1, [2 * A + 2])
    # A residual over a 2-input layer: x + f(x, y); y is consumed.
    _check(tl.Residual(Sum()), (A, B), 2, 1, [A + A + B])


def test_scan_carries_state_along_axis(backend_name):
    # cell: (x_t, carry) -> (y_t = x_t + carry, new carry = x_t + carry): a running sum.
    cell = tl.Serial(Sum(), tl.Dup())
    scan = tl.Scan(cell, axis=1)
    xs = np.arange(8, dtype=np.float32).reshape(2, 4)
    init = np.array([0.0, 100.0], np.float32)
    ys, final = scan((xs, init))
    np.testing.assert_allclose(ys, np.cumsum(xs, axis=1) + init[:, None])
    np.testing.assert_allclose(final, xs.sum(1) + init)
    assert (scan.n_in, scan.n_out) == (2, 2)


def test_scan_predict_keeps_carry_between_calls(backend_name):
    cell = tl.Serial(Sum(), tl.Dup())
    scan = tl.Scan(cell, axis=1, mode='predict')
    xs = np.arange(8, dtype=np.float32).reshape(2, 4)
    zero = np.zeros(2, np.float32)
    w, state = scan.init(shapes.signature((xs[:, :1], zero)))
    outs = []
    for t in range(4):
        (y, _), state = scan.pure_fn((xs[:, t:t + 1], zero), w, state)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, 1), np.cumsum(xs, axis=1))


def test_chunk_equals_unchunked(backend_name):
    model = tl.Serial(tl.Dense(4), tl.Relu(), tl.Dense(3))
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    w, s = model.init(shapes.signature(x))
    full, _ = model.pure_fn(x, w, s)
    chunked = tl.Chunk(model, 2)
    y, _ = chunked.pure_fn(x, w, (s,))
    np.testing.assert_allclose(np.asarray(y), np.asarray(full), atol=1e-6)
    y_odd, _ = tl.Chunk(model, 4).pure_fn(x, w, (s,))   # 6 % 4 != 0: runs unchunked
    np.testing.assert_allclose(np.asarray(y_odd), np.asarray(full), atol=1e-6)


def test_wrappers_keep_the_weights_tree():
    dense = tl.Serial(tl.Dense(3), tl.Dense(2))
    sig = shapes.signature(np.ones((4, 5), np.float32))
    plain = fastmath.tree_structure(dense.init(sig)[0])
    assert fastmath.tree_structure(tl.Cache(dense).init(sig)[0]) == plain
    assert fastmath.tree_structure(tl.Chunk(dense, 2).init(sig)[0]) == plain


def test_cache_stores_on_real_inputs_and_returns_them_on_empty_ones(backend_name):
    cache = tl.Cache(tl.Dense(2))
    x = np.ones((1, 3, 4), np.float32)
    w, s = cache.init(shapes.signature(x))
    run = fastmath.jit(cache.pure_fn) if backend_name == 'jax' else cache.pure_fn
    y1, s = run(x, w, s)                                     # first call: computed, stored
    y2, s = run(x[:, :0], w, s)                              # empty input: the stored output
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(y1))
    y3, s = run(x * 5, w, s)                                 # real input again: recomputed
    np.testing.assert_allclose(np.asarray(y3), 5 * np.asarray(y1) - 4 * np.asarray(w[1]),
                               rtol=1e-5)
    y4, _ = run(x[:, :0], w, s)
    np.testing.assert_array_equal(np.asarray(y4), np.asarray(y3))


def test_weights_and_state_trees_mirror_sublayers():
    model = tl.Serial(tl.Dense(3), tl.Branch(tl.Dense(2), None), tl.Parallel(tl.Relu(), tl.Relu()))
    with fastmath.use_backend('numpy'):
        w, s = model.init(shapes.signature(np.ones((1, 4), np.float32)))
    assert len(w) == 3 and len(w[1]) == 2 and w[1][1] == () and w[2] == ((), ())
    assert w[0][0].shape == (4, 3) and w[1][0][0].shape == (3, 2)
    assert model.sublayers[0].weights[0] is w[0][0]   # sublayers see their weights after init


def test_init_is_reproducible_from_rng(backend_name):
    model = tl.Serial(tl.Dense(3), tl.Dense(2))
    sig = shapes.signature(np.ones((1, 4), np.float32))
    w1, _ = model.init(sig, rng=fastmath.random.get_prng(5))
    w2, _ = model.init(sig, rng=fastmath.random.get_prng(5))
    w3, _ = model.init(sig, rng=fastmath.random.get_prng(6))
    np.testing.assert_array_equal(np.asarray(w1[0][0]), np.asarray(w2[0][0]))
    assert not np.array_equal(np.asarray(w1[0][0]), np.asarray(w3[0][0]))
    assert not np.array_equal(np.asarray(w1[0][0][:, :2]), np.asarray(w1[1][0][:3]))


def test_dropout_uses_rng_in_train_only(backend_name):
    x = np.ones((4, 50), np.float32)
    train, ev = tl.Dropout(0.5, mode='train'), tl.Dropout(0.5, mode='eval')
    k1, k2 = fastmath.random.get_prng(1), fastmath.random.get_prng(2)
    y1, _ = train.pure_fn(x, (), (), k1)
    y1b, _ = train.pure_fn(x, (), (), k1)
    y2, _ = train.pure_fn(x, (), (), k2)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y1b))
    assert not np.array_equal(np.asarray(y1), np.asarray(y2))
    assert set(np.unique(np.asarray(y1))) <= {0.0, 2.0}
    np.testing.assert_array_equal(np.asarray(ev.pure_fn(x, (), (), k1)[0]), x)
    shared, _ = tl.Dropout(0.5, shared_axes=[0], mode='train').pure_fn(x, (), (), k1)
    assert all(np.array_equal(np.asarray(shared)[0], row) for row in np.asarray(shared))


def test_positional_encoding_predict_equals_eval(backend_name):
    x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    ev, pr = tl.PositionalEncoding(8, mode='eval'), tl.PositionalEncoding(8, mode='predict')
    w, s = ev.init(shapes.signature(x))
    full, _ = ev.pure_fn(x, w, s)
    _, state = pr.init(shapes.signature(x[:, :1]))
    step, state = pr.pure_fn(x[:, :3], w, state)             # a prefix of 3, then one at a time
    outs = [np.asarray(step)]
    for t in range(3, 5):
        step, state = pr.pure_fn(x[:, t:t + 1], w, state)
        outs.append(np.asarray(step))
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), atol=1e-6)
    assert int(state) == 5


def test_shift_right(backend_name):
    x = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(tl.ShiftRight()(x)), [[0, 1, 2], [0, 4, 5]])
    np.testing.assert_array_equal(np.asarray(tl.ShiftRight(mode='predict')(x)), x)


def test_cross_entropy_and_accuracy_values(backend_name):
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]], np.float32))
    targets = np.array([[0, 1]], np.int32)
    weights = np.array([[1.0, 3.0]], np.float32)
    loss = float(tl.CrossEntropyLoss()((logits, targets, weights)))
    np.testing.assert_allclose(loss, (-np.log(0.7) - 3 * np.log(0.1)) / 4, rtol=1e-5)
    acc = float(tl.Accuracy()((logits, targets, weights)))
    np.testing.assert_allclose(acc, 0.25)
    padded = float(tl.CrossEntropyLoss(pad_id=1)((logits, targets)))  # position 1 is padding
    np.testing.assert_allclose(padded, -np.log(0.7), rtol=1e-5)
