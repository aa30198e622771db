"""CrossEntropyLoss targets: outside [0, V) and not the padding id they are an error when
concrete (NumPy, JAX eager) and make the loss NaN under jit, never a silently wrong number."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl

LOGITS = np.log(np.array([[[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]], np.float32))
WEIGHTS = np.ones((1, 2), np.float32)


def _loss(layer, *inputs):
    weights, state = layer.init(shapes.signature(inputs))
    return layer.pure_fn(inputs, weights, state)[0]


@pytest.mark.parametrize('bad', [-1, -7, 4])
def test_targets_outside_the_vocabulary_are_rejected(backend_name, bad):
    targets = np.array([[2, bad]], np.int32)
    with pytest.raises(Exception, match=rf'CrossEntropyLoss: target {bad} is outside the '
                                        rf'vocabulary \[0, 4\); 1 such target'):
        _loss(tl.CrossEntropyLoss(), LOGITS, targets, WEIGHTS)


def test_negative_padding_id_is_allowed_other_negatives_are_not(backend_name):
    loss = _loss(tl.CrossEntropyLoss(pad_id=-1), LOGITS, np.array([[3, -1]], np.int32))
    np.testing.assert_allclose(float(loss), -np.log(0.4), rtol=1e-5)
    with pytest.raises(Exception, match=r'target -1 is outside the vocabulary \[0, 4\) \(or the '
                                        r'padding id 0\)'):
        _loss(tl.CrossEntropyLoss(pad_id=0), LOGITS, np.array([[3, -1]], np.int32))


def test_under_jit_a_bad_target_makes_the_loss_nan_padding_does_not():
    with fastmath.use_backend('jax'):
        for pad_id, targets, finite in [(None, [[3, -1]], False), (0, [[3, -1]], False),
                                        (-1, [[3, -1]], True), (None, [[3, 4]], False),
                                        (None, [[3, 0]], True)]:
            layer = tl.CrossEntropyLoss(pad_id=pad_id)
            inputs = (LOGITS, np.array(targets, np.int32))
            if pad_id is None:
                inputs += (WEIGHTS,)
            weights, state = layer.init(shapes.signature(inputs))
            loss = fastmath.jit(lambda x: layer.pure_fn(x, weights, state)[0])(inputs)
            assert bool(np.isfinite(loss)) == finite, (pad_id, targets, loss)
