"""Optimizers: optax transformations, completed by a learning-rate schedule.

An `Optimizer` holds hyper-parameters only (like Trax's optimizer classes);
`optimizer.transform(lr_schedule)` returns the optax GradientTransformation
the training loop uses, with the schedule read at step = optax count + 1 and,
when `clip_gradient_norm` is set, gradients clipped by their global norm first.
optax is imported only when a transformation is built.

Example:
    >>> opt = Adafactor()          # the paper's settings: beta1 0, decay 0.8, clipping 1.0
    >>> (opt.name, opt.hyper_parameters['decay_rate'])
    ('Adafactor', 0.8)
"""
import dataclasses
from typing import Any, Callable

from trax_sparse.fastmath import BackendError
from trax_sparse.training.schedules import Schedule


def import_optax() -> Any:
    """The optax module, or a clear error when it (or jax) is missing."""
    try:
        import optax
    except ImportError as e:
        raise BackendError(f'training needs optax and jax (pip install jax optax): {e}') from e
    return optax


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax optimizer without its learning rate.

    name: for messages and checkpoints; hyper_parameters: the optax arguments;
    build: (optax, learning_rate_fn, **hyper_parameters) -> GradientTransformation;
    clip_gradient_norm: clip gradients to this global norm first (None: no clipping).
    """
    name: str
    build: Callable[..., Any]
    hyper_parameters: dict
    clip_gradient_norm: float | None = None

    def transform(self, lr_schedule: Schedule) -> Any:
        """The optax GradientTransformation with learning rate lr_schedule(step), step >= 1."""
        optax = import_optax()
        tx = self.build(optax, lambda count: lr_schedule(count + 1), **self.hyper_parameters)
        if self.clip_gradient_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(self.clip_gradient_norm), tx)
        return tx


def _check_clip(name: str, clip_gradient_norm: float | None) -> None:
    if clip_gradient_norm is not None and not clip_gradient_norm > 0:
        raise ValueError(f'{name}: clip_gradient_norm must be > 0 or None, '
                         f'got {clip_gradient_norm}')


def _build_sgd(optax, learning_rate, momentum, nesterov):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _build_adam(optax, learning_rate, b1, b2, eps, weight_decay_rate):
    if weight_decay_rate:
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay_rate)
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _build_adafactor(optax, learning_rate, decay_rate, beta1, clipping_threshold,
                     multiply_by_parameter_scale, factored, epsilon1, min_dim_size_to_factor,
                     weight_decay_rate):
    return optax.adafactor(
        learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold, momentum=beta1 or None,
        weight_decay_rate=weight_decay_rate, eps=epsilon1, factored=factored)


def SGD(momentum: float | None = None, nesterov: bool = False,  # noqa: N802 - Trax style.
        clip_gradient_norm: float | None = None) -> Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""
    _check_clip('SGD', clip_gradient_norm)
    return Optimizer('SGD', _build_sgd, {'momentum': momentum, 'nesterov': nesterov},
                     clip_gradient_norm)


def Adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-5,  # noqa: N802
         weight_decay_rate: float = 0.0, clip_gradient_norm: float | None = None) -> Optimizer:
    """Adam (optax.adam); with weight_decay_rate > 0, decoupled decay (optax.adamw).

    eps defaults to Trax's 1e-5.
    """
    _check_clip('Adam', clip_gradient_norm)
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f'Adam: b1 and b2 must be in [0, 1), got {b1}, {b2}')
    return Optimizer('Adam', _build_adam, {'b1': b1, 'b2': b2, 'eps': eps,
                                           'weight_decay_rate': weight_decay_rate},
                     clip_gradient_norm)


def Adafactor(decay_rate: float = 0.8, beta1: float = 0.0,  # noqa: N802
              clipping_threshold: float | None = 1.0, multiply_by_parameter_scale: bool = True,
              factored: bool = True, epsilon1: float = 1e-30, min_dim_size_to_factor: int = 128,
              weight_decay_rate: float | None = None,
              clip_gradient_norm: float | None = None) -> Optimizer:
    """Adafactor as in the paper (optax.adafactor): no momentum (beta1 0), second-moment decay
    1 - step^-0.8, update clipping at block RMS 1.0, relative step size (learning rate times
    the parameter's RMS, at least 1e-3), factored second moments for matrices whose two largest
    axes are >= min_dim_size_to_factor."""
    _check_clip('Adafactor', clip_gradient_norm)
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f'Adafactor: beta1 must be in [0, 1), got {beta1}')
    return Optimizer('Adafactor', _build_adafactor, {
        'decay_rate': decay_rate, 'beta1': beta1, 'clipping_threshold': clipping_threshold,
        'multiply_by_parameter_scale': multiply_by_parameter_scale, 'factored': factored,
        'epsilon1': epsilon1, 'min_dim_size_to_factor': min_dim_size_to_factor,
        'weight_decay_rate': weight_decay_rate}, clip_gradient_norm)


__all__ = ['Adafactor', 'Adam', 'Optimizer', 'SGD', 'import_optax']
