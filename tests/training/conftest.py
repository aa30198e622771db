"""The training tests share a JAX persistent compilation cache: their tiny models and
steps then compile once per machine instead of once per Loop (and per subprocess)."""
import os
import tempfile

import jax

CACHE_DIR = os.environ.get('TRAX_SPARSE_TEST_JAX_CACHE',
                           os.path.join(tempfile.gettempdir(), 'trax_sparse_test_jax_cache'))
if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', CACHE_DIR)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def subprocess_env(**extra: str) -> dict:
    """The environment for a test subprocess: repo on sys.path, the same compilation cache."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    env.update(extra)
    return env
