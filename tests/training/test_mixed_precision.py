"""Training with compute_dtype='bfloat16' (docs/precision.md): float32 master weights,
optimizer state and checkpoints, float32 metrics, bit-exact resume; float16 is refused."""
import gin
import numpy as np
import pytest

from trax_sparse import configurables, fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse import training
from trax_sparse.precision import compute_dtype
from trax_sparse.training import checkpoint as ckpt
from tests.training import tiny


def _bf16_lm(mode: str = 'train', dtype: str = 'bfloat16') -> tl.Layer:
    """tiny.TinyLM with its activations in `dtype` (the embedding starts them)."""
    return tl.Serial(tl.ShiftRight(mode=mode), tl.Embedding(tiny.VOCAB, 8, compute_dtype=dtype),
                     tl.Dropout(0.1, mode=mode), tl.Dense(16), tl.Relu(), tl.Dense(tiny.VOCAB))


def _loop(directory, dtype='bfloat16'):
    task = training.TrainTask(tiny.CountingStream(), optimizer=training.Adam(),
                              lr_schedule=training.constant(tiny.LEARNING_RATE),
                              n_steps_per_checkpoint=2)
    return training.Loop(_bf16_lm(dtype=dtype), task, output_dir=str(directory), random_seed=7,
                         progress_bar=False)


def _leaves(tree):
    return [np.asarray(a) for a in fastmath.tree_leaves(tree)]


def test_bfloat16_training_keeps_float32_state_and_resumes_bit_exact(tmp_path):
    straight = _loop(tmp_path / 'straight')
    straight.run(8)
    straight.close()
    first = _loop(tmp_path / 'resumed')
    first.run(4)
    first.close()
    resumed = _loop(tmp_path / 'resumed')
    assert resumed.step == 4
    resumed.run(4)
    resumed.close()
    for a, b in zip(_leaves(straight.weights), _leaves(resumed.weights)):
        assert a.dtype == np.float32                   # the master copy, in the checkpoint too
        np.testing.assert_array_equal(a, b)
    saved = ckpt.load_latest(str(tmp_path / 'straight' / 'checkpoints'))
    assert saved.step == 8
    for leaf in fastmath.tree_leaves(saved.weights) + list(saved.opt_state_leaves):
        assert np.dtype(leaf.dtype) in (np.float32, np.int32), leaf.dtype
    train = [r for r in straight.history if r['split'] == 'train']
    assert train[-1]['loss'] < train[0]['loss']
    assert all(isinstance(r['loss'], float) and np.isfinite(r['loss']) for r in train)
    # The activations really are bfloat16: the logits of the trained model.
    batch = tiny.counting_batch(0)
    out = straight.model.output_signature(shapes.signature(batch[0]))
    assert out.dtype == compute_dtype('bfloat16')


def test_float16_training_is_refused_naming_compute_dtype(tmp_path):
    with pytest.raises(ValueError, match=r"compute_dtype='float16'.*loss scaling.*bfloat16"):
        _loop(tmp_path, dtype='float16').run(1)


def test_the_gin_binding_turns_bfloat16_on():
    gin.clear_config()
    try:
        configurables.add_search_paths()
        gin.parse_config(["ScalingTransformerLM.compute_dtype = 'bfloat16'"])
        model = gin.get_configurable('ScalingTransformerLM')(
            vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2, ff_sparsity=4,
            attention_type='sparse_qkv', qkv_sparsity=2, loss_sparsity=2)
    finally:
        gin.clear_config()
    with fastmath.use_backend('numpy'):
        sig = shapes.ShapeDtype((1, 4), np.int32)
        assert model.output_signature(sig).dtype == compute_dtype('bfloat16')
        weights = fastmath.tree_leaves(model.weights_signature(sig))
        assert all(w.dtype == np.float32 for w in weights)
