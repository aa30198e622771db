"""Shared pytest fixtures: backends and keys."""
import pytest

from trax_sparse import fastmath

BACKENDS = ('numpy', 'jax')


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Runs the test once per backend, inside `fastmath.use_backend`."""
    with fastmath.use_backend(request.param):
        yield request.param
