"""examples/sparse_ff_diagnostics.py (issue 24): its --quick path trains a tiny sparse-FF model
and diagnoses it; the numbers are checked, and the hard-mask pass built from the layer's
functions equals the model's own eval and the trainer's logged eval."""
import importlib.util
import math
import os
import pathlib

import gin
import numpy as np
import pytest

from trax_sparse import configurables

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location(
        'sparse_ff_diagnostics', ROOT / 'examples' / 'sparse_ff_diagnostics.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_diagnostics_report_consistent_numbers(capsys):
    helpers.require_shakespeare()
    flags = os.environ.get('XLA_FLAGS')
    result = _example().main(['--quick'])
    assert os.environ.get('XLA_FLAGS') == flags             # no flag left to later tests
    val = result['validation']
    assert math.isfinite(val['hard']) and math.isfinite(val['soft'])
    assert 0 < val['hard'] < 7 and 0 < val['soft'] < 7          # nats/byte, vocab 258
    assert val['hard'] == pytest.approx(val['normal'], abs=1e-5)   # the walk == the eval
    assert val['hard'] == pytest.approx(result['logged_eval'], abs=1e-4)   # the trainer's
    assert val['soft'] != val['hard']
    assert val['tokens'] == 64                                  # 2 batches of 2 x 16
    (layer,) = val['layers']
    assert (layer['n'], layer['blocks'], layer['d_ff']) == (8, 8, 64)
    assert 0 < layer['entropy'] <= layer['log_n'] + 1e-9 and layer['log_n'] == math.log(8)
    assert 1 <= layer['used_min'] <= layer['used_mean'] <= 8
    assert 0 <= layer['dead'] <= 64 - 8                         # each block chooses something
    assert layer['dead'] == round(64 - 8 * layer['used_mean'])
    (grads,) = result['gradients']
    for part in ('controller', 'W1', 'W2'):
        assert math.isfinite(grads[part]) and grads[part] > 0
        assert grads[f'{part}_relative'] > 0
    out = capsys.readouterr().out
    assert '`.venv/bin/python examples/sparse_ff_diagnostics.py --quick`' in out
    assert '| hard (argmax one-hot: the eval) |' in out and '| soft (softmax' in out


def test_a_dir_without_a_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        _example().main([str(tmp_path)])
    assert str(e.value) == (f'sparse_ff_diagnostics: {tmp_path}: no usable checkpoint (expected '
                            f'checkpoints/ckpt-*.json written by the trainer)')


def test_a_model_without_sparse_ff_is_refused():
    example = _example()
    gin.clear_config()
    configurables.add_search_paths()
    try:
        gin.parse_config(['train.model = @TransformerLM', 'TransformerLM.vocab_size = 16',
                          'TransformerLM.d_model = 8', 'TransformerLM.d_ff = 16',
                          'TransformerLM.n_heads = 1', 'TransformerLM.n_layers = 1'])
        tokens = np.ones((1, 4), np.int32)
        with pytest.raises(example.DiagnosticsError, match='TransformerLM has no SparseFF layer: '
                           'expected a model with ff_sparsity set'):
            example.validation([(tokens, tokens, np.ones((1, 4), np.float32))], None)
    finally:
        gin.clear_config()
