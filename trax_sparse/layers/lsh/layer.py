"""LSHSelfAttention: Reformer's locality-sensitive-hashing self-attention (docs/architecture.md).

Shared QK per head (keys are the unit-normalised queries), random-rotation
hashing with n_hashes rounds, sort by (bucket, position), chunked attention
with look-back / look-ahead, causal + padding + self masks, rounds combined
with the softmax of their log-sum-exps. The algorithm lives in core.py
(fast path), hashing.py (hash) and predict.py (decoding) beside this file;
the loop oracle the tests compare with is tests/layers/lsh_reference.py.

Differences from Trax (docs/differences_from_trax.md): no shape is fixed at init, any
length works per call (#1664); the rotations and the dropout masks come from the
call's rng through a counter-based hash (hashing.random_bits), so NumPy and
JAX give the same buckets and masks for the same key, and compile fast;
predict mode has a defined decoding rule equal to eval when the budget covers
the sequence.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes
    >>> from trax_sparse.layers import LSHSelfAttention
    >>> x = np.random.default_rng(0).normal(size=(2, 16, 8)).astype(np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     attn = LSHSelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
    ...                             n_hashes=2, n_buckets=4, mode='eval')
    ...     weights, state = attn.init(shapes.signature(x))
    ...     y, new_state = attn.pure_fn(x, weights, state, fastmath.random.get_prng(1))
    ...     y_short, _ = attn.pure_fn(x[:, :10], weights, state)   # another length, no re-init
    >>> y.shape, new_state.shape, y_short.shape      # state: buckets [B, H, n_hashes * L]
    ((2, 16, 8), (2, 2, 32), (2, 10, 8))
"""
import math
from typing import Any

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers import initializers as init
from trax_sparse.layers.base import Layer, check_mode, check_rate, is_replaying, split_rngs
from trax_sparse.layers.errors import check_mask_shape
from trax_sparse.sharding import Axes
from trax_sparse.layers.lsh.core import (LSHSettings, attend_backward, attend_given_buckets,
                                         hash_and_attend, padded_length, with_settings)
from trax_sparse.layers.lsh.hashing import check_n_buckets
from trax_sparse.layers.lsh.predict import init_cache, predict_forward


def _positive(layer_name: str, **values: int) -> None:
    for key, value in values.items():
        if int(value) < 1:
            raise ValueError(f'{layer_name}: {key} must be >= 1, got {value}')


def _non_negative(layer_name: str, **values: int) -> None:
    for key, value in values.items():
        if int(value) < 0:
            raise ValueError(f'{layer_name}: {key} must be >= 0, got {value}')


class LSHSelfAttention(Layer):
    """LSH self-attention: x [B, L, d] -> [B, L, d], memory O(n_hashes·L·chunk_len) per head.

    Inputs/outputs: x, or (x, mask) -> (y, mask) when masked=True (mask [B, L],
    nonzero = real token, passed through unchanged so a stack of masked layers
    keeps it; it gets no gradient).
    Weights (the same in every mode): W_qk [H, d, d_qk], W_v [H, d, d_v],
    W_o [H, d_v, d]; head outputs are summed.
    Hash: rotations R ~ N(0, 1) [H, d_qk, n_hashes, n_buckets/2] drawn from the
    call's rng; bucket = argmax([xR; -xR]). Padding (internal or masked)
    positions get an extra bucket n_buckets, so they sort last. n_buckets may
    be a list of factors (factorized hash: Π f_i buckets from Σ f_i/2
    directions) or None: 2·L/chunk_len buckets for a length L (about chunk_len/2
    positions a bucket), factorized above 128, as Trax; in predict mode L is
    predict_mem_len, so the prefix and every later token hash alike.
    Length: any L per call; if L is not a multiple of chunk_len it is padded
    internally with masked positions (pad_to_chunk=True) or rejected.
    State (train/eval): the buckets of the last forward, int32 [B, H,
    n_hashes·L_padded] (round-major). The custom backward recomputes the
    forward with these buckets under fastmath.vjp (no attention matrix is kept);
    inside `base.replay_context()` the forward reads them from the state it is
    given instead of hashing again.
    Predict (causal only): a cache of keys, values and buckets; see
    predict.py for the decoding rule. predict_budget defaults to
    n_hashes·chunk_len·(1 + n_chunks_before); the prefix and every step pad
    internally whatever pad_to_chunk says. On NumPy a decoding step writes the
    new position into the cache arrays in place (O(current length) per step).
    Dropout (attention probabilities, output elements) only in train.
    heads_in_turn (train/eval): compute and differentiate one head at a time (a scan over
    heads, as Trax's n_parallel_heads=1): about 1/n_heads of the attention's memory, ~10-15%
    slower on CPU (docs/RESULTS.md, section 2); used only without attention dropout.

    Example (decoding):
        >>> import numpy as np
        >>> from trax_sparse import fastmath, shapes
        >>> x = np.ones((2, 5, 8), np.float32)
        >>> with fastmath.use_backend('numpy'):
        ...     attn = LSHSelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
        ...                             n_buckets=4, predict_mem_len=16, mode='predict')
        ...     weights, cache = attn.init(shapes.signature(x[:, :1]))
        ...     y, cache = attn.pure_fn(x[:, :3], weights, cache)    # a prefix, computed as eval
        ...     y, cache = attn.pure_fn(x[:, 3:4], weights, cache)   # then one token at a time
        >>> y.shape, int(cache[4])                                    # cache[4]: cached positions
        ((2, 1, 8), 4)
    """

    def __init__(self, n_heads: int = 2, d_qk: int = 64, d_v: int = 64, causal: bool = False,
                 masked: bool = False, chunk_len: int = 128, n_chunks_before: int = 1,
                 n_chunks_after: int = 0, n_hashes: int = 1, n_buckets: Any = 64,
                 attention_dropout: float = 0.0, output_dropout: float = 0.0,
                 predict_mem_len: int = 2048, predict_budget: int | None = None,
                 pad_to_chunk: bool = True, heads_in_turn: bool = False,
                 mode: str = 'train'):
        n_items = 2 if masked else 1
        super().__init__(n_in=n_items, n_out=n_items, name='LSHSelfAttention')
        name = self.name
        _positive(name, n_heads=n_heads, d_qk=d_qk, d_v=d_v, chunk_len=chunk_len,
                  n_hashes=n_hashes, predict_mem_len=predict_mem_len)
        _non_negative(name, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after)
        self._mode = check_mode(mode, name)
        if self._mode == 'predict' and not causal:
            raise ValueError(f'{name}: predict mode decodes left to right and needs causal=True '
                             f'(got causal=False)')
        self._d_v, self._masked = int(d_v), bool(masked)
        self._pad_to_chunk = bool(pad_to_chunk)
        attention_dropout = check_rate(name, 'attention_dropout', attention_dropout)
        output_dropout = check_rate(name, 'output_dropout', output_dropout)
        train = self._mode == 'train'
        if predict_budget is None:
            predict_budget = int(n_hashes) * int(chunk_len) * (1 + int(n_chunks_before))
        _positive(name, predict_budget=predict_budget)
        self._settings = LSHSettings(
            layer_name=name, n_heads=int(n_heads), d_qk=int(d_qk), n_hashes=int(n_hashes),
            bucket_factors=check_n_buckets(name, n_buckets), causal=bool(causal),
            chunk_len=int(chunk_len), n_chunks_before=int(n_chunks_before),
            n_chunks_after=int(n_chunks_after),
            attention_dropout=attention_dropout if train else 0.0,
            output_dropout=output_dropout if train else 0.0,
            mem_len=int(predict_mem_len), budget=int(predict_budget),
            heads_in_turn=bool(heads_in_turn))

    @property
    def has_backward(self) -> bool:
        """Train/eval use the recompute-with-the-same-buckets gradient (not predict)."""
        return self._mode != 'predict'

    # ---- shapes ----------------------------------------------------------------------------
    def padded_length(self, length: int) -> int:
        """The length the chunks run on: `length` rounded up to a multiple of chunk_len."""
        chunk_len = self._settings.chunk_len
        if length % chunk_len and not self._pad_to_chunk:
            raise ValueError(f'{self.name}: sequence length {length} is not a multiple of '
                             f'chunk_len={chunk_len} (pad_to_chunk=False); pad the input or '
                             f'pass pad_to_chunk=True')
        padded = padded_length(length, chunk_len)
        n_buckets = self._settings.for_length(padded).n_buckets
        if (n_buckets + 1) * padded >= 2 ** 31:
            raise ValueError(f'{self.name}: (n_buckets + 1) * length = {n_buckets + 1} * '
                             f'{padded} overflows the int32 sort keys')
        return padded

    def _split_inputs(self, inputs: Any) -> tuple[Any, Any]:
        x, mask = inputs if self._masked else (inputs, None)
        if len(x.shape) != 3:
            raise ValueError(f'{self.name} expects x of shape [batch, length, d_model], got '
                             f'{tuple(x.shape)}')
        if mask is not None:
            check_mask_shape(self.name, mask, x.shape[:2])
        return x, mask

    # ---- init --------------------------------------------------------------------------------
    def weight_axes(self) -> tuple:
        # W_qk [H, d, d_qk], W_v [H, d, d_v], W_out [H, d_v, d]
        return (Axes('heads', 'embed', 'kv'), Axes('heads', 'embed', 'kv'),
                Axes('heads', 'kv', 'embed'))

    def init_weights_and_state(self, input_signature: Any) -> None:
        x_sig, _ = self._split_inputs(input_signature)
        batch, length, d = x_sig.shape
        s = self._settings
        h, d_qk, d_v = s.n_heads, s.d_qk, self._d_v
        rng_qk, rng_v, rng_o = split_rngs(self.rng, 3)
        lim_qk = math.sqrt(6.0 / (d + h * d_qk))      # Glorot over the stacked [d, H·d_h] matrix
        lim_v = math.sqrt(6.0 / (d + h * d_v))
        lim_o = math.sqrt(6.0 / (h * d_v + d))
        self.weights = (init.RandomUniformInitializer(lim_qk)((h, d, d_qk), rng_qk),
                        init.RandomUniformInitializer(lim_v)((h, d, d_v), rng_v),
                        init.RandomUniformInitializer(lim_o)((h, d_v, d), rng_o))
        if self._mode == 'predict':
            self.state = init_cache(batch, d_v, self._predict_settings(), x_sig.dtype)
        else:
            self.state = xnp.zeros((batch, h, s.n_hashes * self.padded_length(length)),
                                   xnp.int32)

    def attention_caches(self, state: Any) -> tuple:
        # predict: keys and values (the buckets, rotations and position are not K/V)
        return tuple(state[:2]) if self._mode == 'predict' else ()

    def _predict_settings(self) -> LSHSettings:
        """Settings of predict mode: n_buckets=None is resolved for predict_mem_len, so the
        prefix and every later token hash alike."""
        s = self._settings
        return s.for_length(padded_length(s.mem_len, s.chunk_len))

    # ---- forward -----------------------------------------------------------------------------
    def _check_weights(self, x: Any, weights: tuple) -> None:
        w_qk = weights[0]
        if x.shape[-1] != w_qk.shape[1]:
            raise ValueError(f'{self.name} was initialized for d_model={w_qk.shape[1]}, got x of '
                             f'shape {tuple(x.shape)}')

    def _valid(self, x: Any, mask: Any) -> Any:
        if mask is None:
            return xnp.ones(x.shape[:2], xnp.bool_)
        return mask != 0

    def _bucket_shape(self, batch: int, padded: int) -> tuple[int, int, int, int]:
        return batch, self._settings.n_heads, self._settings.n_hashes, padded

    def _recorded_buckets(self, batch: int, padded: int) -> Any:
        _, h, r, _ = self._bucket_shape(batch, padded)
        expected = (batch, h, r * padded)
        state = self.state
        if not hasattr(state, 'shape') or tuple(state.shape) != expected:
            got = tuple(state.shape) if hasattr(state, 'shape') else type(state).__name__
            raise ValueError(f'{self.name}: replaying needs the buckets of the forward pass, '
                             f'int32 {expected}; the state holds {got}')
        return state.reshape(self._bucket_shape(batch, padded))

    def forward(self, inputs: Any) -> Any:
        x, mask = self._split_inputs(inputs)
        self._check_weights(x, self.weights)
        valid = self._valid(x, mask)
        if self._mode == 'predict':
            y, self.state = predict_forward(x, valid, self.weights, self.state, self.rng,
                                            self._predict_settings())
            return (y, mask) if self._masked else y
        batch, length, _ = x.shape
        padded = self.padded_length(length)
        settings = self._settings.for_length(padded)          # n_buckets=None: from the length
        if is_replaying():
            buckets = self._recorded_buckets(batch, padded)
            y = with_settings(attend_given_buckets, settings)(x, valid, self.weights,
                                                              buckets, self.rng)
        else:
            y, buckets = with_settings(hash_and_attend, settings)(x, valid, self.weights,
                                                                  self.rng)
        self.state = buckets.reshape((batch, buckets.shape[1], -1))   # [B, H, R·Lp]
        return (y, mask) if self._masked else y

    def backward(self, inputs: Any, output: Any, grad: Any, weights: Any, state: Any,
                 new_state: Any, rng: Any) -> tuple[Any, Any]:
        """Recomputes the forward with the buckets in new_state under vjp; returns the grads."""
        x, mask = self._split_inputs(inputs)
        valid = self._valid(x, mask)
        batch, length, _ = x.shape
        padded = self.padded_length(length)
        buckets = new_state.reshape(self._bucket_shape(batch, padded))
        x_grad, weights_grad = with_settings(attend_backward, self._settings.for_length(padded))(
            x, valid, weights, buckets, rng, grad[0] if self._masked else grad)
        if self._masked:
            return (x_grad, fastmath.backend().zero_cotangent(mask)), weights_grad
        return x_grad, weights_grad


__all__ = ['LSHSelfAttention']
