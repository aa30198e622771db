"""Losses and metrics as layers: weighted cross-entropy and accuracy.

Inputs are (logits [..., V], targets [...] int, weights [...]); with `pad_id`
set the weights are computed as (targets != pad_id) and n_in is 2.

Targets must lie in [0, V), except the padding id. Concrete targets (NumPy, or JAX
outside jit) that do not raise a ValueError naming the first bad one. Under jit the
targets are abstract and cannot be checked: there an out-of-range target that is not
the padding id makes the loss NaN (never a silently wrong number: take_along_axis
would read the last row for -1), and the training Loop checks each batch on the host
before its jitted step.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> loss = CrossEntropyLoss()
    >>> logits = np.log(np.array([[[0.5, 0.5]]], np.float32))
    >>> with fastmath.use_backend('numpy'):
    ...     print(round(float(loss((logits, np.array([[0]]), np.ones((1, 1), np.float32)))), 4))
    0.6931
"""
from typing import Any

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer
from trax_sparse.precision import float32_stats


class _WeightedMetric(Layer):
    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, name: str, pad_id: int | None):
        super().__init__(n_in=3 if pad_id is None else 2, name=name)
        self._pad_id = pad_id

    def forward(self, inputs: Any) -> Any:
        if self._pad_id is None:
            logits, targets, weights = inputs
        else:
            logits, targets = inputs
            weights = (targets != self._pad_id).astype(xnp.float32)
        logits = float32_stats(logits)         # losses and metrics are float32 (or wider)
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f'{self.name}: targets shape {tuple(targets.shape)} must equal the '
                             f'logits shape without its last axis {tuple(logits.shape[:-1])}')
        self._check_targets(targets, logits.shape[-1])
        weights = xnp.broadcast_to(weights, targets.shape).astype(logits.dtype)
        values = self.per_position(logits, targets)
        return xnp.sum(values * weights) / xnp.maximum(xnp.sum(weights), 1e-9)

    def _valid(self, targets: Any, vocab_size: int) -> Any:
        """Where targets are in [0, vocab_size) or equal the padding id."""
        valid = (targets >= 0) & (targets < vocab_size)
        return valid if self._pad_id is None else valid | (targets == self._pad_id)

    def _check_targets(self, targets: Any, vocab_size: int) -> None:
        if not fastmath.is_concrete(targets):
            return                                   # under jit: per_position gives NaN
        targets = onp.asarray(targets)
        bad = targets[~self._valid(targets, vocab_size)]
        if bad.size:
            pad = '' if self._pad_id is None else f' (or the padding id {self._pad_id})'
            raise ValueError(f'{self.name}: target {int(bad[0])} is outside the vocabulary '
                             f'[0, {vocab_size}){pad}; {bad.size} such target(s)')

    def per_position(self, logits: Any, targets: Any) -> Any:
        raise TypeError('subclasses define per_position')


class CrossEntropyLoss(_WeightedMetric):
    """Weighted mean of −log softmax(logits)[target]."""

    def __init__(self, pad_id: int | None = None):
        super().__init__('CrossEntropyLoss', pad_id)

    def per_position(self, logits: Any, targets: Any) -> Any:
        log_probs = logits - fastmath.logsumexp(logits, axis=-1, keepdims=True)
        picked = xnp.take_along_axis(log_probs, targets[..., None].astype(xnp.int32), axis=-1)
        if fastmath.is_concrete(targets):            # checked by _check_targets: all valid
            return -picked[..., 0]
        valid = self._valid(targets, logits.shape[-1])
        return xnp.where(valid, -picked[..., 0], xnp.nan)   # NaN for bad targets under jit


class Accuracy(_WeightedMetric):
    """Weighted fraction of positions where argmax(logits) == target."""

    def __init__(self, pad_id: int | None = None):
        super().__init__('Accuracy', pad_id)

    def per_position(self, logits: Any, targets: Any) -> Any:
        return (xnp.argmax(logits, axis=-1) == targets).astype(logits.dtype)


__all__ = ['Accuracy', 'CrossEntropyLoss']
