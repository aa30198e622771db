"""Weight initializers: factories returning `init(shape, rng) -> float32 array`.

Example:
    >>> from trax_sparse import fastmath
    >>> init = GlorotUniformInitializer()
    >>> with fastmath.use_backend('numpy'):
    ...     w = init((4, 8), fastmath.random.get_prng(0))
    >>> w.shape, str(w.dtype)
    ((4, 8), 'float32')
"""
import math
from typing import Any, Callable, Sequence

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp

Initializer = Callable[[Sequence[int], Any], Any]


def _fans(shape: Sequence[int], out_dim: int = -1, in_dim: int = -2) -> tuple[float, float]:
    if len(shape) < 2:
        return float(shape[0] if shape else 1), float(shape[0] if shape else 1)
    receptive = math.prod(shape) / (shape[in_dim] * shape[out_dim])
    return shape[in_dim] * receptive, shape[out_dim] * receptive


def RandomNormalInitializer(stddev: float = 1e-2) -> Initializer:  # noqa: N802
    """N(0, stddev²)."""
    def init(shape, rng):
        return (fastmath.random.normal(rng, tuple(shape)) * stddev).astype(xnp.float32)
    return init


def RandomUniformInitializer(lim: float = 1.0) -> Initializer:  # noqa: N802
    """U(-lim, lim)."""
    def init(shape, rng):
        return fastmath.random.uniform(rng, tuple(shape), xnp.float32, -lim, lim)
    return init


def VarianceScalingInitializer(scale: float, mode: str, distribution: str,  # noqa: N802
                               out_dim: int = -1, in_dim: int = -2) -> Initializer:
    """Variance scale/fan with fan = fan_in, fan_out or their average ('fan_avg')."""
    if mode not in ('fan_in', 'fan_out', 'fan_avg'):
        raise ValueError(f'VarianceScalingInitializer: mode must be fan_in|fan_out|fan_avg, '
                         f'got {mode!r}')
    if distribution not in ('uniform', 'normal'):
        raise ValueError(f"VarianceScalingInitializer: distribution must be uniform|normal, "
                         f"got {distribution!r}")

    def init(shape, rng):
        fan_in, fan_out = _fans(shape, out_dim, in_dim)
        fan = {'fan_in': fan_in, 'fan_out': fan_out, 'fan_avg': (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, fan)
        if distribution == 'uniform':
            lim = math.sqrt(3.0 * variance)
            return fastmath.random.uniform(rng, tuple(shape), xnp.float32, -lim, lim)
        return (fastmath.random.normal(rng, tuple(shape)) * math.sqrt(variance)).astype(xnp.float32)
    return init


def GlorotUniformInitializer(out_dim: int = -1, in_dim: int = -2,  # noqa: N802
                             scale: float = 1.0) -> Initializer:
    return VarianceScalingInitializer(scale, 'fan_avg', 'uniform', out_dim, in_dim)


def GlorotNormalInitializer(out_dim: int = -1, in_dim: int = -2,  # noqa: N802
                            scale: float = 1.0) -> Initializer:
    return VarianceScalingInitializer(scale, 'fan_avg', 'normal', out_dim, in_dim)


def LeCunUniformInitializer(out_dim: int = -1, in_dim: int = -2) -> Initializer:  # noqa: N802
    return VarianceScalingInitializer(1.0, 'fan_in', 'uniform', out_dim, in_dim)


def ZerosInitializer() -> Initializer:  # noqa: N802
    return lambda shape, rng: xnp.zeros(tuple(shape), xnp.float32)


def OnesInitializer() -> Initializer:  # noqa: N802
    return lambda shape, rng: xnp.ones(tuple(shape), xnp.float32)


__all__ = ['GlorotNormalInitializer', 'GlorotUniformInitializer', 'Initializer',
           'LeCunUniformInitializer', 'OnesInitializer', 'RandomNormalInitializer',
           'RandomUniformInitializer', 'VarianceScalingInitializer', 'ZerosInitializer']
