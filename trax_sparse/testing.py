"""Test oracles: plain, slow references that the library's fast paths must equal.

Not part of the layers API (`tl`); tests, benchmarks and examples import them from here.
- `cached_causal_attention`: new queries against a K/V cache, one masked softmax over
  the whole cache (what `attention_core.cached_attention_step`'s two paths must equal).
- `autodiff_twin`: a layer with every reversible part differentiated by plain autodiff
  (what reversible layers' custom gradients must equal).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> q, cache = np.ones((1, 2, 1, 4), np.float32), np.ones((1, 2, 8, 4), np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     cached_causal_attention(q, cache, cache, start=3).shape
    (1, 2, 1, 4)
"""
from typing import Any

from trax_sparse.layers.attention_core import (dot_product_attention, padding_mask,
                                               prefix_causal_mask)
from trax_sparse.layers.base import Layer
from trax_sparse.layers.combinators import Serial
from trax_sparse.layers.reversible import ReversibleLayer, ReversibleSerial


def cached_causal_attention(q: Any, k_cache: Any, v_cache: Any, start: Any,
                            key_mask: Any = None) -> Any:
    """New queries against a per-head K/V cache, one masked softmax over the whole cache.

    q [B, H, Lq, d_h] are the tokens at positions start..start+Lq-1; k_cache
    [B, H, N, d_h] and v_cache [B, H, N, d_vh] hold keys/values for positions
    0..start+Lq-1 (later slots are ignored). key_mask [B, N] (True = real key), if
    given, also hides padded keys. Returns [B, H, Lq, d_vh]; costs O(N).
    """
    mask = prefix_causal_mask(start, q.shape[2], k_cache.shape[2])     # [Lq, N]
    if key_mask is not None:
        mask = mask[None, None] & padding_mask(key_mask)                 # [B, 1, Lq, N]
    return dot_product_attention(q, k_cache, v_cache, mask)


class _AutodiffForward(Layer):
    """A reversible layer's forward without its custom gradient; same weights and state trees."""

    def __init__(self, layer: ReversibleLayer):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name=f'Autodiff_{layer.name}')
        self._layer = layer

    def forward(self, xs: Any) -> Any:
        y, self.state = self._layer.pure_fn_autodiff(xs, self.weights, self.state, self.rng)
        return y


def autodiff_twin(layer: Layer) -> Layer:
    """The same computation with every reversible part differentiated by ordinary autodiff.

    Serials (reversible or not) are rebuilt with their sublayers' twins; other layers are
    kept. The twin takes the original's weights and state trees and stores activations
    like any plain network: the reference that reversible gradients must equal.

    Example:
        >>> from trax_sparse import layers as tl
        >>> stack = tl.ReversibleSerial(tl.ReversibleHalfResidual(tl.Dense(4)),
        ...                             tl.ReversibleSwap())
        >>> [sub.name for sub in autodiff_twin(stack).sublayers]
        ['Autodiff_ReversibleHalfResidual', 'Autodiff_ReversibleSwap']
    """
    if type(layer) in (Serial, ReversibleSerial):
        return Serial(*[autodiff_twin(sub) for sub in layer.sublayers], name=layer.name)
    if isinstance(layer, ReversibleLayer):
        return _AutodiffForward(layer)
    return layer


__all__ = ['autodiff_twin', 'cached_causal_attention']
