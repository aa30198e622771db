"""Losses and metrics as layers: weighted cross-entropy and accuracy.

Inputs are (logits [..., V], targets [...] int, weights [...]); with `pad_id`
set the weights are computed as (targets != pad_id) and n_in is 2.

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

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer


class _WeightedMetric(Layer):
    def __init__(self, name: str, pad_id: int | None):
        super().__init__(n_in=3 if pad_id is None else 2, name=name)
        self._pad_id = pad_id

    def forward(self, inputs: Any) -> Any:
        if self._pad_id is None:
            logits, targets, weights = inputs
        else:
            logits, targets = inputs
            weights = (targets != self._pad_id).astype(xnp.float32)
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f'{self.name}: targets shape {tuple(targets.shape)} must equal the '
                             f'logits shape without its last axis {tuple(logits.shape[:-1])}')
        weights = xnp.broadcast_to(weights, targets.shape).astype(logits.dtype)
        values = self.per_position(logits, targets)
        return xnp.sum(values * weights) / xnp.maximum(xnp.sum(weights), 1e-9)

    def per_position(self, logits: Any, targets: Any) -> Any:
        raise TypeError('subclasses define per_position')


class CrossEntropyLoss(_WeightedMetric):
    """Weighted mean of −log softmax(logits)[target]."""

    def __init__(self, pad_id: int | None = None):
        super().__init__('CrossEntropyLoss', pad_id)

    def per_position(self, logits: Any, targets: Any) -> Any:
        log_probs = logits - fastmath.logsumexp(logits, axis=-1, keepdims=True)
        picked = xnp.take_along_axis(log_probs, targets[..., None].astype(xnp.int32), axis=-1)
        return -picked[..., 0]


class Accuracy(_WeightedMetric):
    """Weighted fraction of positions where argmax(logits) == target."""

    def __init__(self, pad_id: int | None = None):
        super().__init__('Accuracy', pad_id)

    def per_position(self, logits: Any, targets: Any) -> Any:
        return (xnp.argmax(logits, axis=-1) == targets).astype(logits.dtype)


__all__ = ['Accuracy', 'CrossEntropyLoss']
