"""Measuring decoding: per-token step time and the weight bytes a step must read.

Batch-1 decoding is memory bound: a step cannot be faster than the bytes of
weights it reads divided by the memory bandwidth. `bytes_read_per_token` counts
those bytes for a predict-mode model (SparseFF reads only its chosen rows), and
`time_per_token` measures the median step after warm-up.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> model = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
    >>> weights, _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    >>> bytes_read_per_token(model, weights)      # one embedding row + the Dense layer
    176
"""
import statistics
import time
from typing import Any

import numpy as onp

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.decoding.feed import with_inputs
from trax_sparse.decoding.predict_state import (fresh_state, later_inputs, predict_step,
                                                start_decoding)
from trax_sparse.decoding.storage import store_weights


def bytes_read_per_token(layer: tl.Layer, weights: Any) -> int:
    """Weight bytes one decoding step of a predict-mode `layer` reads (`Layer.bytes_read_per_step`):
    every weight, except one row of an embedding or position table, nothing of a cached
    encoder (tl.Cache), and for SparseFF only the controller plus the chosen rows (2·d·d_ff/N)."""
    return int(layer.bytes_read_per_step(weights))


def time_per_token(model: tl.Layer, weights: Any = None, steps: int = 16, inputs: Any = None,
                   warmup: int = 3, weights_dtype: str | None = None,
                   cache_dtype: str | None = None) -> float:
    """Median seconds of a one-token greedy predict step on the live backend (batch 1).

    The model must be initialized in predict mode; `inputs` are encoder inputs [1, L_in]
    of encoder-decoder models. The prefix call and `warmup` steps are not timed.
    weights_dtype / cache_dtype: store the weights / K/V caches so first (`decoding.storage`).
    """
    weights = store_weights(model, model.weights if weights is None else weights,
                            weights_dtype)
    weights = fastmath.to_backend(weights)
    token, rng, times = onp.zeros((1, 1), onp.int32), fastmath.random.get_prng(0), []
    state = fresh_state(model, None, shapes.signature(with_inputs(inputs, token)), cache_dtype)
    step = predict_step(model, accelerate=True)
    logits, state, _ = start_decoding(model, step, with_inputs(inputs, token), weights, state,
                                      rng, steps + warmup)
    inputs = later_inputs(inputs)
    for i in range(steps + warmup):
        token = onp.asarray(onp.argmax(onp.asarray(logits), -1), onp.int32)[:, None]
        start = time.perf_counter()
        logits, state = step(with_inputs(inputs, token), weights, state, rng)
        fastmath.tree_map(lambda a: a.block_until_ready() if hasattr(a, 'block_until_ready')
                          else a, logits)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


__all__ = ['bytes_read_per_token', 'time_per_token']
