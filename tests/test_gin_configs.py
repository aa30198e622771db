"""Every file in gin/ parses and builds its model; the tiny ones train one step on Shakespeare.

The paper-size ones are checked by their output signature only (no weights are allocated).
"""
import os
import pathlib

import gin
import numpy as np
import pytest

from tests import helpers
from trax_sparse import configurables, fastmath, shapes
from trax_sparse import layers as tl

GIN_DIR = pathlib.Path(configurables.GIN_DIR)
FRAGMENTS = {'shakespeare_lm.gin', 'shakespeare_span_corruption.gin', 'cpu_training.gin',
             'paper_training.gin', 'c4_span_corruption.gin'}
TINY = {'transformer_lm_tiny.gin', 'scaling_transformer_lm_tiny.gin', 'transformer_tiny.gin',
        'scaling_transformer_tiny.gin', 'reformer_lm_tiny.gin', 'terraformer_tiny.gin'}
LM_SIG = shapes.ShapeDtype((1, 512), np.int32)
C4_SIG = (shapes.ShapeDtype((1, 512), np.int32), shapes.ShapeDtype((1, 114), np.int32))
PAPER = {  # file -> input signature for its output signature check
    'c4_scaling_transformer_baseline.gin': C4_SIG,
    'c4_scaling_transformer_sparse.gin': C4_SIG,
    'terraformer_c4_medium.gin': C4_SIG,
    'terraformer_arxiv.gin': (shapes.ShapeDtype((1, 15360), np.int32),
                              shapes.ShapeDtype((1, 1024), np.int32)),
}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    configurables.add_search_paths()
    yield
    gin.clear_config()


def _model(mode: str) -> tl.Layer:
    return gin.query_parameter('train.model').scoped_configurable_fn(mode=mode)


def test_every_gin_file_is_classified():
    files = {p.name for p in GIN_DIR.glob('*.gin')}
    assert files == FRAGMENTS | TINY | set(PAPER), 'classify new gin files in this test'


@pytest.mark.parametrize('name', sorted(FRAGMENTS | TINY | set(PAPER)))
def test_parses(name):
    gin.parse_config_file(str(GIN_DIR / name))


@pytest.mark.parametrize('name', sorted(TINY))
def test_tiny_config_trains_one_step(name, tmp_path):
    helpers.require_shakespeare()
    gin.parse_config_files_and_bindings(
        [str(GIN_DIR / name)],
        ['seq_len = 32', 'input_len = 32', 'batch_size = 2', 'train.steps = 1',
         'train.eval_steps = 1', 'train.checkpoint_every = 1'])
    model_name = gin.query_parameter('train.model').selector.split('.')[-1]
    for depth in ('n_layers', 'n_encoder_layers', 'n_decoder_layers'):  # one block: faster jit
        try:
            gin.query_parameter(f'{model_name}.{depth}')
        except ValueError:
            continue
        with gin.unlock_config():
            gin.bind_parameter(f'{model_name}.{depth}', 1)
    with fastmath.use_backend('jax'):
        loop = configurables.train(output_dir=str(tmp_path / 'run'))
    assert loop.step == 1
    assert any(f.endswith('.json') for f in os.listdir(tmp_path / 'run' / 'checkpoints')) or \
        any('ckpt' in f or f.endswith('.npz') for _, _, fs in os.walk(tmp_path / 'run')
            for f in fs)


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_config_builds_its_output_signature(name):
    gin.parse_config_file(str(GIN_DIR / name))
    model = _model('eval')
    with fastmath.use_backend('jax'):
        out = model.output_signature(PAPER[name])
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == PAPER[name][1].shape + (32000,)


def test_paper_dense_and_sparse_have_the_same_size():
    counts = {}
    for name in ('c4_scaling_transformer_baseline.gin', 'c4_scaling_transformer_sparse.gin'):
        gin.clear_config()
        gin.parse_config_file(str(GIN_DIR / name))
        with fastmath.use_backend('jax'):
            counts[name] = tl.count_params(_model('eval'), C4_SIG)
    dense, sparse = counts.values()
    assert 7.5e8 < dense < 8.5e8, dense            # the paper's ≈800M baseline
    assert abs(sparse - dense) / dense < 0.05, counts


def test_unknown_binding_names_it():
    with pytest.raises(ValueError, match='not_a_parameter'):
        gin.parse_config('ScalingTransformerLM.not_a_parameter = 3')
    with pytest.raises(ValueError, match='NoSuchModel'):
        gin.parse_config('train.model = @NoSuchModel')


def test_bad_value_names_the_configurable():
    gin.parse_config_file(str(GIN_DIR / 'scaling_transformer_lm_tiny.gin'))
    gin.parse_config("ScalingTransformerLM.attention_type = 'sparse_kqv'")
    with pytest.raises(ValueError, match=r"ScalingTransformerLM: attention_type='sparse_kqv' "
                                         r"must be one of \('dense', 'sparse_qkv', 'lsh'\)"):
        _model('train')


def test_mode_is_not_bindable():
    with pytest.raises(ValueError, match='mode'):
        gin.parse_config("TransformerLM.mode = 'predict'")


def test_parts_and_sparse_ff_config_bind_in_gin():
    """`Terraformer.ff = @feed_forward()` builds the model that `ff_sparsity = 16` builds."""
    sig = (shapes.ShapeDtype((1, 32), np.int32), shapes.ShapeDtype((1, 8), np.int32))
    trees = []
    for bindings in (['Terraformer.ff = None', 'Terraformer.d_ff = 768',   # the flags only
                      'Terraformer.ff_sparsity = 16'],
                     ['Terraformer.ff_sparsity = 0', 'Terraformer.ff = @feed_forward()',
                      'feed_forward.d_model = 128', 'feed_forward.d_ff = 768',
                      'feed_forward.dropout = 0.1', 'feed_forward.sparsity = @SparseFFConfig()',
                      'SparseFFConfig.n_elements_in_block = 16']):
        gin.clear_config()
        gin.parse_config_files_and_bindings([str(GIN_DIR / 'terraformer_tiny.gin')], bindings)
        with fastmath.use_backend('jax'):
            weights = _model('eval').weights_signature(sig)
        trees.append((fastmath.tree_structure(weights),
                      [(w.shape, w.dtype) for w in fastmath.tree_leaves(weights)]))
    assert trees[0] == trees[1]
