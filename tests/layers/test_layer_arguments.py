"""Constructor arguments are checked where the layer is made: a clear ValueError naming the
layer instead of a ZeroDivisionError (or a backend shape error) at init."""
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl


@pytest.mark.parametrize('n_units', [0, -2, 2.5, True, '8'])
def test_dense_rejects_a_width_that_is_not_a_positive_integer(n_units):
    with pytest.raises(ValueError, match=rf'Dense\(n_units={n_units!r}\): n_units, the output '
                                         rf'width, must be a positive integer'):
        tl.Dense(n_units)


def test_dense_accepts_numpy_integers():
    with fastmath.use_backend('numpy'):
        weights, _ = tl.Dense(np.int64(3)).init(shapes.ShapeDtype((2, 5), np.float32))
    assert weights[0].shape == (5, 3)
