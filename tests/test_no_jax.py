"""`import trax_sparse` and NumPy-only use work with jax absent (run in a subprocess)."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys

    class BlockJax(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == 'jax' or name.startswith(('jax.', 'jaxlib')):
                raise ImportError(f'blocked for this test: {name}')
            return None

    sys.meta_path.insert(0, BlockJax())
    import numpy as np
    import trax_sparse
    from trax_sparse import fastmath, shapes, layers as tl
    assert fastmath.backend_name() == 'numpy', fastmath.backend_name()
    model = tl.Serial(tl.Embedding(10, 8), tl.PositionalEncoding(16), tl.Dense(10), tl.LogSoftmax())
    x = np.array([[1, 2, 3]], np.int32)
    w, s = model.init(shapes.signature(x), rng=fastmath.random.get_prng(0))
    y, _ = model.pure_fn(x, w, s)
    assert y.shape == (1, 3, 10) and model.output_signature(shapes.signature(x)).shape == (1, 3, 10)
    try:
        fastmath.set_backend('jax')
    except fastmath.BackendError as e:
        assert 'jax is not installed' in str(e)
    else:
        raise AssertionError('set_backend(jax) should fail without jax')
    assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules)
    print('OK numpy-only')
''')


def test_numpy_only_without_jax():
    result = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'OK numpy-only' in result.stdout
