"""Predict mode of an encoder-decoder model that stores its encoder in the decoder caches.

Trax decodes an encoder-decoder model by passing the same encoder inputs at every predict
call. A model whose later calls must take empty encoder inputs (`inputs[:, :0]`, the
documented form, docs/predict_mode.md) is wrapped in `EncoderInputsOnce`: after the first
call it runs the model on empty encoder inputs whatever it is given, so both forms give the
same logits, eagerly and under jit.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> inner = tl.Fn('Sizes', lambda e, d: (d * 0 + e.shape[1], d), n_out=2)
    >>> model = EncoderInputsOnce(inner)
    >>> inputs, tokens = np.ones((1, 4), np.int32), np.zeros((1, 1), np.int32)
    >>> with fastmath.use_backend('numpy'):
    ...     w, s = model.init(shapes.signature((inputs, tokens)))
    ...     (first, _), s = model.pure_fn((inputs, tokens), w, s)
    ...     (later, _), s = model.pure_fn((inputs, tokens), w, s)    # inputs again: ignored
    >>> int(first[0, 0]), int(later[0, 0])
    (4, 0)
"""
from typing import Any

from trax_sparse import fastmath
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.flat import FlatForward


class EncoderInputsOnce(tl.Layer):
    """(inputs [B, Le], tokens [B, Ld]) -> model outputs; after the first call the model gets
    `inputs[:, :0]`, so encoder inputs passed again (Trax's decoding) are ignored.

    Weight-transparent (its weights are the model's, as `tl.Cache`), so it is used in
    predict mode only and trained weights load unchanged. State: (model state, number of
    calls so far). Which inputs the model gets depends on the call count: a Python choice
    when the count is concrete (NumPy, eager JAX), `fastmath.cond` under jit (both
    branches are traced; only one runs).
    """

    def __init__(self, model: tl.Layer):
        if model.n_in != 2:
            raise ValueError(f'EncoderInputsOnce wraps an encoder-decoder model taking '
                             f'(inputs, tokens); {model.name} takes {model.n_in} inputs')
        super().__init__(n_in=2, n_out=model.n_out, name=model.name, sublayers=[model])
        self._flat: FlatForward | None = None      # the model as a flat program (eager calls)
        self._memo: dict = {}

    def draws_random_numbers(self) -> bool:
        return False

    @property
    def shares_child_weights(self) -> bool:
        return True

    def init_weights_and_state(self, input_signature: Any) -> None:
        with self.sublayer_context(0):
            w, s = self.sublayers[0].init(input_signature, self.rng)
        self.weights, self.state = w, (s, xnp.zeros((), xnp.int32))

    def forward(self, xs: Any) -> Any:
        inputs, tokens = xs
        model, weights, rng = self.sublayers[0], self.weights, self.rng
        model_state, n_calls = self.state

        def run(encoder_inputs: Any, state: Any) -> tuple[Any, Any]:
            with self.sublayer_context(0):
                return model.pure_fn((encoder_inputs, tokens), weights, state, rng)

        empty = inputs[:, :0]                                       # [B, 0]
        if fastmath.is_concrete(n_calls):   # eager (NumPy decoding): the flat program
            encoder_inputs = inputs if int(n_calls) == 0 else empty
            out, model_state = self._run_flat((encoder_inputs, tokens), weights, model_state,
                                              rng)
        elif inputs.shape[1] == 0:
            out, model_state = run(inputs, model_state)
        else:
            out, model_state = fastmath.cond(n_calls == 0, lambda s: run(inputs, s),
                                             lambda s: run(empty, s), model_state)
        self.state = (model_state, n_calls + 1)
        return out

    def _run_flat(self, xs: Any, weights: Any, state: Any, rng: Any) -> tuple[Any, Any]:
        """The model's pure_fn as a flat program (the same numbers, no tree walk per call),
        built once; its memo keeps the weights split into slots between calls."""
        if self._flat is None:
            self._flat = FlatForward(self.sublayers[0])
        return self._flat(xs, weights, state, rng, self._memo)


__all__ = ['EncoderInputsOnce']
