"""The validation loss of weights stored for decoding: does 16-bit storage change the model?

`stored_loss` runs an eval-mode model (the same weights tree as predict mode) with its
weights stored as `weights_dtype` says (`decoding.storage`: 'bfloat16', 'gathered_bfloat16',
...) on held-out batches and returns the mean cross-entropy per target token: what decoding
with those weights assigns to the text (teacher forced). `compare_storage` gives float32
and the stored weights' losses side by side (the decode binary's --eval_loss).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> model = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
    >>> x = np.array([[1, 2, 3]], np.int32)
    >>> with fastmath.use_backend('numpy'):
    ...     weights, _ = model.init(shapes.signature(x))
    ...     f32, bf16 = compare_storage(model, weights, [(x, x, np.ones_like(x))], 'bfloat16')
    >>> abs(bf16 / f32 - 1) < 5e-3
    True
"""
from typing import Any, Iterable

import numpy as onp

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.decoding.storage import resolve_weights_dtype, store_weights


def stored_loss(model: tl.Layer, weights: Any, batches: Iterable, weights_dtype: str | None,
                n_batches: int | None = None) -> float:
    """Mean cross-entropy (nats per target token) of eval-mode `model` on (inputs, targets,
    mask) `batches` (the first `n_batches`), its `weights` stored as `weights_dtype` (None:
    as given), computing in the model's compute dtype."""
    loss_layer, total, count, state = tl.CrossEntropyLoss(), 0.0, 0.0, None
    for i, (inputs, targets, mask) in enumerate(batches):
        if n_batches is not None and i >= n_batches:
            break
        if state is None:
            _, state = model.init(shapes.signature(inputs))
            weights = fastmath.to_backend(store_weights(model, weights, weights_dtype))
        logits, _ = model.pure_fn(inputs, weights, state)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        loss, _ = loss_layer.pure_fn((logits, targets, mask), (), ())
        n = float(onp.sum(onp.broadcast_to(onp.asarray(mask), onp.shape(targets))))
        total, count = total + float(loss) * n, count + n
    if not count:
        raise ValueError('stored_loss: no batches (or only zero-weight targets) to evaluate')
    return total / count


def compare_storage(model: tl.Layer, weights: Any, batches: Iterable, weights_dtype: str,
                    n_batches: int | None = None) -> tuple[float, float]:
    """(loss with float32 weights, loss with `weights_dtype` storage) on the same batches."""
    batches = list(batches if n_batches is None else
                   (b for b, _ in zip(batches, range(n_batches))))
    return (stored_loss(model, weights, batches, None),
            stored_loss(model, weights, batches, resolve_weights_dtype(weights_dtype)))


__all__ = ['compare_storage', 'stored_loss']
