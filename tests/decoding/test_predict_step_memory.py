"""A compiled predict step does not keep its model (and the model's weights) alive."""
import gc
import weakref

import numpy as np

from trax_sparse import decoding, fastmath, shapes
from trax_sparse import layers as tl


def test_a_decoded_model_is_freed_with_its_last_step():
    with fastmath.use_backend('jax'):
        model = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
        model.init(shapes.ShapeDtype((1, 1), np.int32))
        step = decoding.predict_step(model)
        model_ref = weakref.ref(model)
        del model
        gc.collect()
        assert model_ref() is not None           # the step still uses it
        del step
        gc.collect()
        assert model_ref() is None
