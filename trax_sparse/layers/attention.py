"""Dense multi-head attention layers: causal (with a fast K/V cache), masked, enc-dec.

- `DotProductCausalAttention(n_heads)`: weightless core, (q, k, v) -> y; with
  masked=True (q, k, v, key mask [B, L]) -> y (the mask is cached in predict).
- `CausalAttention(d_feature, n_heads)`: Dense q/k/v, the core, Dense output;
  masked=True: (x, mask) -> (y, mask).
- `Attention(d_feature, n_heads)`: bidirectional, (x, mask) -> (y, mask).
- `EncDecAttention(d_feature, n_heads)`: (x, encoder, encoder mask) -> y.

Predict mode ('predict') decodes a prefix of several tokens, then one token at
a time; the positions continue from call to call:
- DotProductCausalAttention keeps (k_cache [B, H, max_len, d/H], v_cache
  [B, H, max_len, d_v/H], pos int32 scalar) in its state; the batch size is
  the one given to `init`. With a concrete pos (NumPy, eager JAX) a step of
  L tokens reads only the pos + L filled slots; under jit it reads the whole
  buffer with a mask (fixed shapes): see `attention_core.cached_attention_step`.
- The cache is written with `fastmath.update_cache`: IN PLACE on NumPy (the
  returned state shares its arrays with the state passed in; copy a state
  before decoding two continuations from it), functional on JAX (in place
  under jit with the state donated). See docs/predict_mode.md.
- Cache overflow (pos + L > max_len) raises a ValueError when pos is concrete
  (NumPy, JAX without jit); the decoding functions check lengths on the host
  before they start; a jitted call that overflows anyway returns NaN.
- EncDecAttention computes the encoder K/V on the first predict call and
  reuses them from its state afterwards (the encoder input is then ignored).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes
    >>> x = np.ones((2, 5, 8), np.float32)
    >>> layer = CausalAttention(8, n_heads=2, mode='eval')
    >>> with fastmath.use_backend('numpy'):
    ...     w, s = layer.init(shapes.signature(x))
    ...     y, _ = layer.pure_fn(x, w, s)
    >>> y.shape
    (2, 5, 8)
"""
from typing import Any

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like
from trax_sparse.layers.attention_core import (cached_attention_step, causal_mask,
                                               check_divisible, merge_heads,
                                               multihead_attention, padding_mask, split_heads)
from trax_sparse.layers.base import Layer, check_mode, check_rate, note_predict_use, split_rngs
from trax_sparse.layers.combinators import Branch, Parallel, Select, Serial
from trax_sparse.layers.core import Dense
from trax_sparse.layers.errors import check_mask_shape

# Logical axes of the projections: into the heads (q, k, v), and back out of them.
IN_HEADS, HEADS_OUT = ('embed', 'heads'), ('heads', 'embed')


def _check_rank3(layer_name: str, what: str, shape: tuple) -> None:
    if len(shape) != 3:
        raise ValueError(f'{layer_name}: {what} must have shape [batch, length, features], '
                         f'got {tuple(shape)}')


def _check_qkv(layer_name: str, n_heads: int, q_shape: tuple, k_shape: tuple,
               v_shape: tuple) -> None:
    """Validates q [B, Lq, d], k [B, Lk, d], v [B, Lk, d_v] for n_heads heads."""
    for what, shape in (('q', q_shape), ('k', k_shape), ('v', v_shape)):
        _check_rank3(layer_name, what, shape)
    if q_shape[-1] != k_shape[-1]:
        raise ValueError(f'{layer_name}: q and k must have the same width, got q '
                         f'{tuple(q_shape)} and k {tuple(k_shape)}')
    if k_shape[:2] != v_shape[:2] or q_shape[0] != k_shape[0]:
        raise ValueError(f'{layer_name}: q, k, v must share the batch size and k, v the length; '
                         f'got q {tuple(q_shape)}, k {tuple(k_shape)}, v {tuple(v_shape)}')
    check_divisible(layer_name, q_shape[-1], n_heads)
    check_divisible(layer_name, v_shape[-1], n_heads)


class DotProductCausalAttention(Layer):
    """Causal multi-head attention of (q, k, v), each [B, L, d] -> [B, L, d_v]; no weights.

    Splits d into n_heads heads, applies scaled dot-product attention where
    position i sees positions <= i (attention-probability dropout in 'train'
    only), and merges the heads. In 'predict' mode it keeps a K/V cache of
    max_len positions (see the module docstring).

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath
        >>> q = k = v = np.ones((2, 3, 4), np.float32)
        >>> with fastmath.use_backend('numpy'):
        ...     y = DotProductCausalAttention(n_heads=2, mode='eval')((q, k, v))
        >>> y.shape
        (2, 3, 4)
    """

    def draws_random_numbers(self) -> bool:
        return self._mode == 'train' and self._dropout > 0

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        return 2 * n_keys * kv_width                  # q·k and p·v over the cached keys

    def attention_caches(self, state: Any) -> tuple:
        return tuple(state[:2])                       # predict: k, v [B, H, max_len, d_h]

    def __init__(self, n_heads: int, dropout: float = 0.0, max_len: int = 2048,
                 mode: str = 'train', masked: bool = False):
        super().__init__(n_in=4 if masked else 3, n_out=1, name='DotProductCausalAttention')
        self._masked = bool(masked)
        if int(n_heads) < 1:
            raise ValueError(f'{self.name}: n_heads must be >= 1, got {n_heads}')
        check_rate(self.name, 'dropout', dropout)
        if int(max_len) < 1:
            raise ValueError(f'{self.name}: max_len must be >= 1, got {max_len}')
        self._n_heads, self._dropout, self._max_len = int(n_heads), float(dropout), int(max_len)
        self._mode = check_mode(mode, self.name)

    def init_weights_and_state(self, input_signature: Any) -> None:
        q, k, v = input_signature[:3]
        _check_qkv(self.name, self._n_heads, q.shape, k.shape, v.shape)
        self.weights = ()
        if self._mode == 'predict':
            batch, heads, slots = q.shape[0], self._n_heads, self._max_len
            self.state = (xnp.zeros((batch, heads, slots, k.shape[-1] // heads), k.dtype),
                          xnp.zeros((batch, heads, slots, v.shape[-1] // heads), v.dtype),
                          xnp.zeros((), xnp.int32))           # k, v [B, H, max_len, d_h]; pos
            if self._masked:                                   # + key mask [B, max_len]
                self.state += (xnp.zeros((batch, slots), xnp.bool_),)
        else:
            self.state = ()

    def _split_inputs(self, inputs: Any) -> tuple:
        q, k, v = inputs[:3]
        key_mask = inputs[3] if self._masked else None
        if key_mask is not None:
            check_mask_shape(self.name, key_mask, k.shape[:2], 'key mask')
        return q, k, v, key_mask

    def forward(self, inputs: Any) -> Any:
        q, k, v, key_mask = self._split_inputs(inputs)
        _check_qkv(self.name, self._n_heads, q.shape, k.shape, v.shape)
        if q.shape[1] != k.shape[1]:
            raise ValueError(f'{self.name}: causal attention needs as many keys as queries, got '
                             f'{q.shape[1]} queries and {k.shape[1]} keys')
        if self._mode == 'predict':
            return self._predict(q, k, v, key_mask)
        dropout = self._dropout if self._mode == 'train' else 0.0
        mask = causal_mask(q.shape[1])                                   # [L, L]
        if key_mask is not None:
            mask = mask[None, None] & padding_mask(key_mask)             # [B, 1, L, L]
        return multihead_attention(q, k, v, mask, self._n_heads, dropout,
                                   self.rng)                             # [B, L, d_v]

    def _predict(self, q: Any, k: Any, v: Any, key_mask: Any) -> Any:
        k_cache, v_cache, pos = self.state[:3]
        mask_cache = self.state[3] if self._masked else None
        length, heads = q.shape[1], self._n_heads
        fits = ((k_cache.shape[0], k_cache.shape[3] * heads),
                (v_cache.shape[0], v_cache.shape[3] * heads))    # (batch, width) of k and v
        if ((k.shape[0], k.shape[2]), (v.shape[0], v.shape[2])) != fits:
            raise ValueError(f'{self.name}: predict inputs k {tuple(k.shape)}, v '
                             f'{tuple(v.shape)} do not fit the cache initialized for '
                             f'k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)} '
                             f'([batch, heads, max_len, features per head])')
        note_predict_use(self.name, self._max_len, length)
        if fastmath.is_concrete(pos) and int(pos) + length > self._max_len:
            raise ValueError(f'{self.name}: predict cache overflow: position {int(pos)} + '
                             f'{length} new tokens exceeds max_len={self._max_len}')
        q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
        # In place on NumPy, functional (donated under jit) on JAX: see fastmath.update_cache.
        k_cache = fastmath.update_cache(k_cache, k, pos, axis=2)     # [B, H, max_len, d_h]
        v_cache = fastmath.update_cache(v_cache, v, pos, axis=2)
        self.state = (k_cache, v_cache, pos + length)
        if self._masked:
            mask_cache = fastmath.update_cache(mask_cache, key_mask != 0, pos, axis=1)
            self.state += (mask_cache,)
        out = merge_heads(cached_attention_step(q, k_cache, v_cache, pos,
                                                mask_cache))             # [B, L, d_v]
        if fastmath.is_concrete(pos):
            return out
        # Under jit an overflow cannot raise (decoding checks lengths before it starts):
        # poison the output rather than return numbers computed from a clipped write.
        return xnp.where(pos + length > self._max_len, xnp.full_like(out, xnp.nan), out)


def CausalAttention(d_feature: int, n_heads: int = 1, dropout: float = 0.0,  # noqa: N802
                    max_len: int = 2048, masked: bool = False, mode: str = 'train') -> Layer:
    """Causal self-attention x [B, L, d] -> [B, L, d_feature]: Dense q/k/v, core, Dense out.

    masked=True: (x, mask [B, L]) -> (y, mask), keys where mask is False are
    hidden as well (e.g. padding inside a joint encoder-decoder sequence).

    Example:
        >>> CausalAttention(8, n_heads=2).n_in, CausalAttention(8, masked=True).n_out
        (1, 2)
    """
    check_divisible('CausalAttention', d_feature, n_heads)
    check_mode(mode, 'CausalAttention')
    core = DotProductCausalAttention(n_heads, dropout, max_len, mode=mode, masked=masked)
    if not masked:
        return Serial(
            Branch(*[Dense(d_feature, axes=IN_HEADS) for _ in range(3)]),  # q, k, v
            core,
            Dense(d_feature, axes=HEADS_OUT),
            name='CausalAttention')
    return Serial(
        Select([0, 0, 0, 1, 1]),                                         # x, x, x, mask, mask
        Parallel(*[Dense(d_feature, axes=IN_HEADS) for _ in range(3)]),  # q, k, v, mask, mask
        core,                                                            # y, mask
        Dense(d_feature, axes=HEADS_OUT),
        name='CausalAttention')


class _PaddedDotProductAttention(Layer):
    """(q, k, v, mask [B, Lk]) -> multi-head attention of q over the real (mask) keys."""

    def draws_random_numbers(self) -> bool:
        return self._mode == 'train' and self._dropout > 0

    def __init__(self, n_heads: int, dropout: float, mode: str):
        super().__init__(n_in=4, n_out=1, name='PaddedDotProductAttention')
        self._n_heads, self._dropout = int(n_heads), float(dropout)
        self._mode = mode

    def forward(self, inputs: Any) -> Any:
        q, k, v, mask = inputs
        _check_qkv(self.name, self._n_heads, q.shape, k.shape, v.shape)
        check_mask_shape(self.name, mask, k.shape[:2], axes='[batch, key length]')
        dropout = self._dropout if self._mode == 'train' else 0.0
        return multihead_attention(q, k, v, padding_mask(mask), self._n_heads, dropout, self.rng)


def Attention(d_feature: int, n_heads: int = 1, dropout: float = 0.0,  # noqa: N802
              mode: str = 'train') -> Layer:
    """Bidirectional self-attention with a padding mask: (x, mask) -> (y, mask).

    x [B, L, d], mask [B, L] (bool or 0/1, True = real token); padded keys get
    no attention. A row whose keys are all padding averages the values (finite).

    Example:
        >>> layer = Attention(8, n_heads=2)
        >>> (layer.n_in, layer.n_out)
        (2, 2)
    """
    check_divisible('Attention', d_feature, n_heads)
    check_mode(mode, 'Attention')
    check_rate('Attention', 'dropout', dropout)
    return Serial(
        Select([0, 0, 0, 1, 1]),                                        # x, x, x, mask, mask
        Parallel(*[Dense(d_feature, axes=IN_HEADS) for _ in range(3)]),  # q, k, v, mask, mask
        _PaddedDotProductAttention(n_heads, dropout, mode),             # y, mask
        Dense(d_feature, axes=HEADS_OUT),
        name='Attention')


class EncDecAttention(Layer):
    """Attention from decoder positions to the encoder: (x, encoder, mask) -> y.

    x [B, Ld, d] gives the queries, encoder activations [B, Le, d_enc] the
    keys/values, mask [B, Le] (True = real encoder token) hides encoder padding.
    Output y [B, Ld, d_feature] (n_out=1; to keep the encoder and its mask on
    the stack, copy them first, e.g. Select([0, 1, 2, 1, 2])). In 'predict' the
    encoder K/V are computed on the first call and cached in the state; later
    calls reuse them and ignore the encoder input.

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath
        >>> x, enc = np.ones((2, 3, 8), np.float32), np.ones((2, 5, 8), np.float32)
        >>> mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
        >>> with fastmath.use_backend('numpy'):
        ...     y = EncDecAttention(8, n_heads=2, mode='eval')((x, enc, mask))
        >>> y.shape
        (2, 3, 8)
    """

    def draws_random_numbers(self) -> bool:
        return self._mode == 'train' and self._dropout > 0

    def __init__(self, d_feature: int, n_heads: int = 1, dropout: float = 0.0,
                 mode: str = 'train'):
        check_divisible('EncDecAttention', d_feature, n_heads)
        check_rate('EncDecAttention', 'dropout', dropout)
        sublayers = [Dense(d_feature, axes=axes)                      # q, k, v, output
                     for axes in (IN_HEADS, IN_HEADS, IN_HEADS, HEADS_OUT)]
        super().__init__(n_in=3, n_out=1, name='EncDecAttention', sublayers=sublayers)
        self._d_feature, self._n_heads = int(d_feature), int(n_heads)
        self._dropout = float(dropout)
        self._mode = check_mode(mode, self.name)

    def init_weights_and_state(self, input_signature: Any) -> None:
        x, enc, mask = input_signature
        _check_rank3(self.name, 'decoder input', x.shape)
        _check_rank3(self.name, 'encoder input', enc.shape)
        attended = x.replace(shape=x.shape[:2] + (self._d_feature,))   # the output's input
        weights = []
        for i, (layer, sig, rng) in enumerate(zip(self.sublayers, (x, enc, enc, attended),
                                                  split_rngs(self.rng, 4))):
            with self.sublayer_context(i):
                weights.append(layer.init(sig, rng)[0])
        self.weights = tuple(weights)
        if self._mode == 'predict':
            kv = self.sublayers[1].abstract_forward(enc, weights[1], (), self.rng)  # [B, Le, d]
            self.state = (xnp.zeros(kv.shape, kv.dtype), xnp.zeros(kv.shape, kv.dtype),
                          xnp.zeros((), xnp.bool_))                   # k, v, filled
        else:
            self.state = ()

    def sublayer_states(self, state: Any) -> tuple:
        return ((),) * len(self.sublayers)    # the state is this layer's K/V cache alone

    def attention_caches(self, state: Any) -> tuple:
        return tuple(state[:2])               # predict: the encoder's k, v [B, Le, d]

    def forward(self, inputs: Any) -> Any:
        x, enc, mask = inputs
        _check_rank3(self.name, 'decoder input', x.shape)
        _check_rank3(self.name, 'encoder input', enc.shape)
        dense_q, dense_k, dense_v, dense_out = self.sublayers
        w_q, w_k, w_v, w_out = self.weights

        def encoder_kv(_):
            k, _s = dense_k.pure_fn(enc, w_k, ())                      # [B, Le, d]
            v, _s = dense_v.pure_fn(enc, w_v, ())                      # [B, Le, d]
            return k, v

        if self._mode == 'predict':
            k_cache, v_cache, filled = self.state

            def encoder_kv_as_cache(_):       # the cache may be kept in another dtype
                k, v = encoder_kv(None)
                return cast_like(k, k_cache), cast_like(v, v_cache)

            if fastmath.is_concrete(filled):
                k, v = (k_cache, v_cache) if bool(filled) else encoder_kv_as_cache(None)
            else:
                k, v = fastmath.cond(filled, lambda _: (k_cache, v_cache), encoder_kv_as_cache,
                                     None)
            self.state = (k, v, xnp.ones((), xnp.bool_))
        else:
            k, v = encoder_kv(None)
        q, _ = dense_q.pure_fn(x, w_q, ())                              # [B, Ld, d]
        check_mask_shape(self.name, mask, k.shape[:2], 'encoder mask',
                         '[batch, encoder length]')
        dropout = self._dropout if self._mode == 'train' else 0.0
        y = multihead_attention(q, k, v, padding_mask(mask), self._n_heads, dropout,
                                self.rng)                               # [B, Ld, d]
        out, _ = dense_out.pure_fn(y, w_out, ())
        return out


__all__ = ['Attention', 'CausalAttention', 'DotProductCausalAttention', 'EncDecAttention']
