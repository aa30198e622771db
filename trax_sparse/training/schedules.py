"""Learning-rate schedules: plain `step -> learning rate` functions (step counts from 1).

`multifactor` is Trax's product of named factors; the common Transformer
schedule is 'constant * linear_warmup * rsqrt_decay'. A schedule works on a
Python int (for logging) and on a traced integer inside a jit'd update.

Example:
    >>> from trax_sparse import fastmath
    >>> schedule = multifactor('constant * linear_warmup', constant=0.5, warmup_steps=4)
    >>> with fastmath.use_backend('numpy'):
    ...     [round(float(schedule(s)), 3) for s in (1, 2, 4, 8)]
    [0.125, 0.25, 0.5, 0.5]
"""
import math
from typing import Any, Callable

from trax_sparse.fastmath import numpy as xnp

Schedule = Callable[[Any], Any]
FACTORS = ('constant', 'linear_warmup', 'rsqrt_decay', 'rsqrt_normalized_decay', 'decay_every',
           'cosine_decay')


def _parse_factors(factors: str) -> list[str]:
    names = [name.strip() for name in factors.split('*')]
    unknown = [name for name in names if name not in FACTORS]
    if not names or unknown:
        raise ValueError(f'multifactor: unknown factor(s) {unknown} in {factors!r}; '
                         f'expected names from {FACTORS} joined by "*"')
    return names


def multifactor(factors: str = 'constant * linear_warmup * rsqrt_decay', constant: float = 0.1,
                warmup_steps: int = 400, decay_factor: float = 0.5, steps_per_decay: int = 20000,
                steps_per_cycle: int = 100000) -> Schedule:
    """The product of the named factors at each step (Trax's multifactor schedule).

    constant: `constant`; linear_warmup: min(1, step / warmup_steps);
    rsqrt_decay: 1 / sqrt(max(step, warmup_steps));
    rsqrt_normalized_decay: sqrt(warmup_steps) / sqrt(max(step, warmup_steps));
    decay_every: decay_factor ** (step // steps_per_decay);
    cosine_decay: cosine from 1 to 0 over each cycle of steps_per_cycle steps after warm-up.
    """
    names = _parse_factors(factors)
    if warmup_steps < 0 or steps_per_decay <= 0 or steps_per_cycle <= 0:
        raise ValueError(f'multifactor: warmup_steps must be >= 0 and steps_per_decay, '
                         f'steps_per_cycle > 0; got {warmup_steps}, {steps_per_decay}, '
                         f'{steps_per_cycle}')

    def schedule(step):
        step = xnp.asarray(step).astype(xnp.float32)
        lr = xnp.asarray(1.0, xnp.float32)
        for name in names:
            if name == 'constant':
                lr = lr * constant
            elif name == 'linear_warmup':
                lr = lr * xnp.minimum(1.0, step / max(warmup_steps, 1))
            elif name == 'rsqrt_decay':
                lr = lr / xnp.sqrt(xnp.maximum(step, float(warmup_steps)))
            elif name == 'rsqrt_normalized_decay':
                lr = lr * math.sqrt(warmup_steps) / xnp.sqrt(xnp.maximum(step, float(warmup_steps)))
            elif name == 'decay_every':
                lr = lr * decay_factor ** xnp.floor(step / steps_per_decay)
            else:  # cosine_decay
                progress = xnp.maximum(0.0, (step - warmup_steps) / steps_per_cycle)
                lr = lr * xnp.maximum(0.0, 0.5 * (1.0 + xnp.cos(math.pi * (progress % 1.0))))
        return lr

    schedule.__name__ = f'multifactor({factors})'
    return schedule


def constant(value: float = 0.001) -> Schedule:
    """The same learning rate at every step."""
    return multifactor('constant', constant=value)


def warmup(n_warmup_steps: int = 1000, max_value: float = 0.001) -> Schedule:
    """Linear warm-up from 0 to `max_value` over `n_warmup_steps`, then constant."""
    return multifactor('constant * linear_warmup', constant=max_value,
                       warmup_steps=n_warmup_steps)


def warmup_and_rsqrt_decay(n_warmup_steps: int = 1000, max_value: float = 0.001) -> Schedule:
    """Linear warm-up to `max_value`, then max_value * sqrt(n_warmup_steps / step)."""
    return multifactor('constant * linear_warmup * rsqrt_normalized_decay', constant=max_value,
                       warmup_steps=n_warmup_steps)


__all__ = ['FACTORS', 'Schedule', 'constant', 'multifactor', 'warmup', 'warmup_and_rsqrt_decay']
