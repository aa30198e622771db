"""Core layers: Dense, Embedding, Dropout, LayerNorm, activations, shifting, positions.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, layers as tl
    >>> with fastmath.use_backend('numpy'):
    ...     y = tl.Dense(3)(np.ones((2, 5), np.float32))
    >>> y.shape
    (2, 3)
"""
import math
from typing import Any, Sequence

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers import initializers as init
from trax_sparse.precision import cast_like, check_compute_dtype, float32_stats
from trax_sparse.precision import compute_dtype as compute_dtype_of
from trax_sparse.sharding import Axes
from trax_sparse.layers.base import (Fn, Layer, check_mode, check_rate, note_predict_use,
                                     split_rngs)
from trax_sparse.layers.token_ids import first_bad_id


def check_last_axis(layer: Layer, x: Any, expected: int, what: str = 'input') -> None:
    """Raises a ValueError unless x.shape[-1] == expected."""
    if len(x.shape) == 0 or x.shape[-1] != expected:
        raise ValueError(f'{layer.name} expected {what} with last axis {expected} (the size it was '
                         f'initialized with), got shape {tuple(x.shape)}')


class Dense(Layer):
    """Affine map on the last axis: x [..., d_in] -> x @ W + b [..., n_units]."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, n_units: int, kernel_initializer: init.Initializer | None = None,
                 bias_initializer: init.Initializer | None = None, use_bias: bool = True,
                 axes: tuple[str | None, str | None] = ('embed', 'mlp')):
        if isinstance(n_units, bool) or not isinstance(n_units, (int, onp.integer)) \
                or n_units < 1:
            raise ValueError(f'Dense(n_units={n_units!r}): n_units, the output width, must be a '
                             f'positive integer')
        super().__init__(name=f'Dense_{n_units}')
        self._n_units, self._use_bias = int(n_units), use_bias
        self._kernel_init = kernel_initializer or init.GlorotUniformInitializer()
        self._bias_init = bias_initializer or init.RandomNormalInitializer(1e-6)
        if len(axes) != 2:
            raise ValueError(f'{self.name}: axes names the input and the output axis, e.g. '
                             f"('embed', 'mlp'); got {axes!r}")
        self._axes = tuple(axes)

    def weight_axes(self) -> tuple:
        d_in, d_out = self._axes                     # W [d_in, n_units], b [n_units]
        return (Axes(d_in, d_out), Axes(d_out)) if self._use_bias else (Axes(d_in, d_out),)

    def init_weights_and_state(self, input_signature: Any) -> None:
        if not input_signature.shape:
            raise ValueError(f'{self.name} needs inputs with at least one axis, got a scalar')
        rng_w, rng_b = split_rngs(self.rng, 2)
        w = self._kernel_init((input_signature.shape[-1], self._n_units), rng_w)
        self.weights = (w, self._bias_init((self._n_units,), rng_b)) if self._use_bias else (w,)
        self.state = ()

    def forward(self, x: Any) -> Any:
        w = cast_like(self.weights[0], x)          # the weights in x's (the compute) dtype
        check_last_axis(self, x, w.shape[0])
        y = fastmath.parallel_matmul(x, w)         # [..., n_units]; NumPy: large w on 2 threads
        return y + cast_like(self.weights[1], x) if self._use_bias else y


def table_row_bytes(weights: Any) -> int:
    """Bytes of one row of a (table [rows, d],) weights tree: what a lookup step reads."""
    table = weights[0]
    return onp.dtype(table.dtype).itemsize * int(table.shape[-1])


class Embedding(Layer):
    """Token ids [...] (int) -> vectors [..., d_feature] from a [vocab_size, d_feature] table.

    compute_dtype: the dtype of the vectors it returns, where a model's activations
    start (the rows are cast after the lookup, so a table stored in 16 bits is read as
    16 bits); None returns the table's dtype, and so does 'float32' for a float64 table
    (gradient checks in float64).
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, vocab_size: int, d_feature: int,
                 kernel_initializer: init.Initializer | None = None,
                 compute_dtype: str | None = None):
        super().__init__(name=f'Embedding_{vocab_size}_{d_feature}')
        self._vocab_size, self._d_feature = int(vocab_size), int(d_feature)
        self._kernel_init = kernel_initializer or init.RandomNormalInitializer(1.0)
        self._dtype = (None if compute_dtype is None else
                       compute_dtype_of(check_compute_dtype(self.name, compute_dtype)))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def vocab_sizes(self) -> tuple[int, ...]:
        return (self._vocab_size,)

    def weight_axes(self) -> tuple:
        return (Axes('vocab', 'embed'),)

    def bytes_read_per_step(self, weights: Any) -> int:
        return table_row_bytes(weights)

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        return 0                                    # a lookup

    def gathered_weights(self, weights: Any) -> tuple:
        return tuple(weights)                       # one row per token

    def init_weights_and_state(self, input_signature: Any) -> None:
        if not onp.issubdtype(input_signature.dtype, onp.integer):
            raise ValueError(f'{self.name} expects integer token ids, got {input_signature.dtype}')
        self.weights = (self._kernel_init((self._vocab_size, self._d_feature), self.rng),)
        self.state = ()

    def forward(self, ids: Any) -> Any:
        if not onp.issubdtype(ids.dtype, onp.integer):
            raise ValueError(f'{self.name} expects integer token ids, got dtype {ids.dtype}')
        if fastmath.is_concrete(ids):
            bad = first_bad_id(ids, self._vocab_size)        # the rule of layers/token_ids.py
            if bad is not None:
                raise ValueError(f'{self.name}: token id {bad} is outside the vocabulary '
                                 f'[0, {self._vocab_size})')
        else:   # under jit: a negative id must not wrap around to the last rows; ids out
            #       of range give NaN vectors (take's fill mode), never a silent wrong row.
            ids = xnp.where(ids < 0, self._vocab_size, ids)
        table = xnp.asarray(self.weights[0])  # a no-op unless weights come from the other backend
        rows = xnp.take(table, ids, axis=0)  # [..., d_feature]
        dtype = self._dtype
        keep_wider = dtype is not None and dtype.itemsize == 4 and rows.dtype.itemsize > 4
        if dtype is None or rows.dtype == dtype or keep_wider:
            return rows                      # (float32 compute keeps a float64 table's rows)
        return rows.astype(dtype)


class Dropout(Layer):
    """Zeroes a fraction `rate` of activations in 'train' (scaled by 1/(1-rate)); identity else.

    `shared_axes` lists axes along which one mask value is shared.
    """

    def draws_random_numbers(self) -> bool:
        return self._mode == 'train' and self._rate > 0

    def __init__(self, rate: float = 0.0, shared_axes: Sequence[int] | None = None,
                 mode: str = 'train'):
        super().__init__(name='Dropout')
        self._rate = check_rate('Dropout', 'rate', rate)
        self._shared_axes = tuple(shared_axes or ())
        self._mode = check_mode(mode, 'Dropout')

    def forward(self, x: Any) -> Any:
        if self._mode != 'train' or self._rate == 0.0:
            return x
        mask_shape = [1 if i in self._shared_axes or i - x.ndim in self._shared_axes else d
                      for i, d in enumerate(x.shape)]
        keep = fastmath.random.bernoulli(self.rng, 1.0 - self._rate, mask_shape)
        return xnp.where(keep, x / (1.0 - self._rate), xnp.zeros_like(x))


class LayerNorm(Layer):
    """Normalizes the last axis: (x - mean) / sqrt(var + eps) * scale + bias.

    With center=False the mean is not subtracted (RMS normalization).
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, center: bool = True, epsilon: float = 1e-6):
        super().__init__(name='LayerNorm')
        self._center, self._epsilon = center, float(epsilon)

    def weight_axes(self) -> tuple:
        return (Axes('embed'), Axes('embed'))           # scale [d], bias [d]

    def init_weights_and_state(self, input_signature: Any) -> None:
        d = input_signature.shape[-1]
        self.weights = (xnp.ones((d,), xnp.float32), xnp.zeros((d,), xnp.float32))
        self.state = ()

    def forward(self, x: Any) -> Any:
        scale, bias = self.weights
        d = scale.shape[0]
        check_last_axis(self, x, d)
        # sum / d is what mean computes (both backends), without np.mean's Python
        # wrapper: ~10 µs a call, a quarter of a decoding step's LayerNorm.
        # The statistics and the normalized values in float32, the output in x's dtype.
        dtype, x = x.dtype, float32_stats(x)
        if self._center:
            x = x - x.sum(axis=-1, keepdims=True) / d
        variance = (x * x).sum(axis=-1, keepdims=True) / d
        y = x / xnp.sqrt(variance + self._epsilon) * float32_stats(scale) + float32_stats(bias)
        return y if y.dtype == dtype else y.astype(dtype)


def Relu() -> Layer:  # noqa: N802
    """max(x, 0) with slope 0 at 0 (as jax.nn.relu and Trax's SparseFF): SparseFF's one-hot
    mask puts left-out units exactly at 0, where maximum's gradient would be 1/2."""
    return Fn('Relu', lambda x: xnp.where(x > 0, x, 0))     # 0 keeps x's dtype


def Gelu() -> Layer:  # noqa: N802
    """Exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2))."""
    return Fn('Gelu', lambda x: 0.5 * x * (1.0 + fastmath.erf(x / math.sqrt(2.0))))


def FastGelu() -> Layer:  # noqa: N802
    """Tanh approximation of GELU."""
    c = math.sqrt(2.0 / math.pi)
    return Fn('FastGelu', lambda x: 0.5 * x * (1.0 + xnp.tanh(c * (x + 0.044715 * x * x * x))))


def log_softmax(x: Any, axis: int = -1) -> Any:
    """log softmax(x) along `axis`, computed in float32 (a 16-bit x is widened first)."""
    x = float32_stats(x)
    return x - fastmath.logsumexp(x, axis=axis, keepdims=True)


def LogSoftmax(axis: int = -1) -> Layer:  # noqa: N802
    """log softmax along `axis`, in float32 statistics, returned in the input's dtype."""
    return Fn('LogSoftmax', lambda x: cast_like(log_softmax(x, axis), x))


def Add() -> Layer:  # noqa: N802
    """(a, b) -> a + b."""
    return Fn('Add', lambda a, b: a + b)


class Concatenate(Layer):
    """Concatenates the top `n_items` items along `axis`."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, n_items: int = 2, axis: int = -1):
        super().__init__(n_in=n_items, name='Concatenate')
        self._axis = axis

    def forward(self, xs: Any) -> Any:
        return xnp.concatenate(xs, axis=self._axis)


def Mean(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    return Fn('Mean', lambda x: xnp.mean(x, axis=axis, keepdims=keepdims))


class ShiftRight(Layer):
    """Shifts axis 1 right by `n_positions`, filling with zeros (identity in predict)."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, n_positions: int = 1, mode: str = 'train'):
        super().__init__(name='ShiftRight')
        self._n, self._mode = int(n_positions), check_mode(mode, 'ShiftRight')

    def forward(self, x: Any) -> Any:
        if self._mode == 'predict':
            return x
        pad = [(0, 0)] * x.ndim
        pad[1] = (self._n, 0)
        return xnp.pad(x, pad)[:, :x.shape[1]]


def sinusoid_table(max_len: int, d_feature: int) -> onp.ndarray:
    """[max_len, d_feature] sin/cos position table of 'Attention is all you need'."""
    position = onp.arange(max_len, dtype=onp.float64)[:, None]
    div = onp.exp(onp.arange(0, d_feature, 2) * -(math.log(10000.0) / d_feature))
    table = onp.zeros((max_len, d_feature))
    table[:, 0::2] = onp.sin(position * div)
    table[:, 1::2] = onp.cos(position * div)[:, :d_feature // 2]
    return table.astype(onp.float32)


class PositionalEncoding(Layer):
    """Adds a trainable position table (initialized to sinusoids) to x [B, L, d].

    In predict mode the state holds the next position, so tokens fed one (or a
    few) at a time get the positions they would have in the full sequence.
    """

    def draws_random_numbers(self) -> bool:
        return self._dropout.draws_random_numbers()

    def __init__(self, max_len: int = 2048, dropout: float = 0.0, mode: str = 'train'):
        super().__init__(name='PositionalEncoding')
        self._max_len, self._mode = int(max_len), check_mode(mode, 'PositionalEncoding')
        self._dropout = Dropout(dropout, mode=mode)

    def weight_axes(self) -> tuple:
        return (Axes('length', 'embed'),)

    def bytes_read_per_step(self, weights: Any) -> int:
        return table_row_bytes(weights)

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        return 0                                    # an add

    def gathered_weights(self, weights: Any) -> tuple:
        return tuple(weights)                       # one row per position

    def init_weights_and_state(self, input_signature: Any) -> None:
        d = input_signature.shape[-1]
        self.weights = (xnp.asarray(sinusoid_table(self._max_len, d)),)
        self.state = xnp.zeros((), xnp.int32) if self._mode == 'predict' else ()

    def forward(self, x: Any) -> Any:
        table = self.weights[0]
        check_last_axis(self, x, table.shape[1])
        length = x.shape[1]
        if self._mode != 'predict':
            if length > self._max_len:
                raise ValueError(f'{self.name}: sequence length {length} exceeds max_len '
                                 f'{self._max_len}')
            y = x + cast_like(table[:length], x)
        else:
            start = self.state
            note_predict_use(self.name, self._max_len, length)
            if fastmath.is_concrete(start) and int(start) + length > self._max_len:
                raise ValueError(f'{self.name}: predict position {int(start) + length} exceeds '
                                 f'max_len {self._max_len}')
            rows = fastmath.dynamic_slice(table, (start, 0), (length, table.shape[1]))
            y = x + cast_like(rows, x)
            self.state = start + length
        out, _ = self._dropout.pure_fn(y, (), (), self.rng)
        return out


__all__ = ['Add', 'Concatenate', 'Dense', 'Dropout', 'Embedding', 'FastGelu', 'Gelu',
           'LayerNorm', 'LogSoftmax', 'Mean', 'PositionalEncoding', 'Relu', 'ShiftRight',
           'sinusoid_table']
