"""The decode binary: a trained checkpoint decodes the same greedy text on NumPy and JAX,
streams without importing jax on NumPy, and bad input gets clear errors."""
import io
import pathlib
import subprocess
import sys
import textwrap

import gin
import numpy as np
import pytest

from tests import helpers
from trax_sparse import configurables, data, decode, fastmath

GIN = str(pathlib.Path(configurables.GIN_DIR) / 'scaling_transformer_lm_tiny.gin')


@pytest.fixture(scope='module')
def trained_dir(tmp_path_factory):
    helpers.require_shakespeare()
    out = tmp_path_factory.mktemp('decode') / 'run'
    gin.clear_config()
    configurables.add_search_paths()
    gin.parse_config_files_and_bindings(
        [GIN], ['seq_len = 64', 'batch_size = 2', 'train.steps = 2', 'train.eval_steps = 1',
                'train.checkpoint_every = 2', 'ScalingTransformerLM.n_layers = 1'])
    with fastmath.use_backend('jax'):
        configurables.train(output_dir=str(out), operative_config=gin.operative_config_str)
    gin.clear_config()
    return str(out)


def test_numpy_and_jax_decode_the_same_greedy_text(trained_dir):
    texts = []
    for backend in ('numpy', 'jax'):
        with fastmath.use_backend(backend):
            buffer = io.StringIO()
            text, seconds = decode.run(trained_dir, prompt='ROMEO:', max_length=12, out=buffer)
        assert buffer.getvalue().startswith('ROMEO:') and seconds > 0
        texts.append(text)
    assert texts[0] == texts[1]


def test_beam_search_from_the_command_line_module(trained_dir):
    with fastmath.use_backend('numpy'):
        text, _ = decode.run(trained_dir, prompt='KING', max_length=6, beam_size=3,
                             out=io.StringIO())
    assert isinstance(text, str)


def test_numpy_decoding_binary_imports_no_jax(trained_dir):
    script = textwrap.dedent(f'''
        import importlib.abc, runpy, sys

        class BlockJax(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == 'jax' or name.startswith(('jax.', 'jaxlib', 'optax')):
                    raise ImportError('blocked for this test: ' + name)
                return None

        sys.meta_path.insert(0, BlockJax())
        sys.argv = ['decode', '--checkpoint_dir={trained_dir}', '--prompt=To be',
                    '--max_length=8', '--backend=numpy']
        try:
            runpy.run_module('trax_sparse.decode', run_name='__main__')
        except SystemExit as e:
            assert not e.code, e.code
        assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('To be')


def test_directory_without_checkpoint(tmp_path):
    with pytest.raises(decode.DecodeError, match='no checkpoint in'):
        decode.run(str(tmp_path), prompt='x')


def test_max_length_beyond_the_model_limit(trained_dir):
    with pytest.raises(decode.DecodeError, match=r'needs \d+ positions, but ScalingTransformerLM '
                                                 r'was built for max_len=512'):
        decode.run(trained_dir, prompt='abc', max_length=600, out=io.StringIO())


def test_prompt_characters_outside_the_vocabulary():
    tokenizer = data.train_sentencepiece(['the cat sat on the mat'] * 20, vocab_size=30,
                                         byte_fallback=False)
    with pytest.raises(decode.DecodeError, match=r"--prompt has characters outside the "
                                                 r"vocabulary: \['é'\]"):
        decode.encode_checked(tokenizer, 'the maté', 1000, '--prompt')
    with pytest.raises(decode.DecodeError, match='outside the model vocabulary of 5 tokens'):
        decode.encode_checked(data.ByteTokenizer(), 'hi', 5, '--prompt')
    np.testing.assert_array_equal(decode.encode_checked(data.ByteTokenizer(), 'hi', 300, 'p'),
                                  data.ByteTokenizer().encode('hi'))
