"""SRU: the Simple Recurrent Unit (Lei et al. 2018), the small recurrence of the Terraformer.

For x [B, L, n] (n = n_units):

    r, f, y = split(x W + b, 3)            W [n, 3n]
    f, r    = sigmoid(f), sigmoid(r)
    c_t     = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ y_t          (c_0 = 0, or the predict state)
    h_t     = r_t ⊙ act(c_t) + (1 - r_t) ⊙ x_t · √3    (act: identity by default)

The only sequential part is the elementwise recurrence in c, a scan over the
length; everything else is one matmul for the whole sequence. The √3 on the
highway keeps the variance of h near that of x (as in Trax's `tl.SRU`).

masked=True: (x, mask [B, L]) -> (h, mask); where mask is False the cell
keeps its value (f = 1, no input), so padding in front of a sequence (the
Terraformer's joint sequence) does not change the outputs of the real tokens.

Predict mode: the state is c of the last position [B, n] (zeros at the
start, as every predict state), so feeding tokens one at a time continues the
recurrence exactly: predict == eval.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes
    >>> x = np.ones((2, 5, 4), np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     sru = SRU(4, mode='eval')
    ...     w, s = sru.init(shapes.signature(x))
    ...     y, _ = sru.pure_fn(x, w, s)
    >>> y.shape
    (2, 5, 4)
"""
import math
from typing import Any, Callable

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_all_like, cast_like, float32_stats, stats_dtype
from trax_sparse.layers import initializers as init
from trax_sparse.layers.base import Layer, check_mode, split_rngs
from trax_sparse.layers.errors import check_mask_shape
from trax_sparse.sharding import Axes

HIGHWAY_SCALE = math.sqrt(3.0)


def sru_recurrence(u: Any, f: Any, c0: Any) -> tuple[Any, Any]:
    """c_t = f_t ⊙ c_{t-1} + u_t over axis 1: u, f [B, L, n], c0 [B, n] -> (c [B, L, n], c_L)."""
    def step(c, inputs):
        u_t, f_t = inputs                                         # [B, n] each
        c = f_t * c + u_t
        return c, c

    c_last, cs = fastmath.scan(step, c0, (xnp.swapaxes(u, 0, 1), xnp.swapaxes(f, 0, 1)))
    return xnp.swapaxes(cs, 0, 1), c_last                         # [B, L, n], [B, n]


def _sigmoid(x: Any) -> Any:
    return 0.5 * (xnp.tanh(0.5 * x) + 1.0)                        # overflow-free logistic


class SRU(Layer):
    """x [B, L, n_units] -> h [B, L, n_units]; see the module docstring for the math.

    activation: a layer factory applied to c (None: identity, as Trax's default).
    masked: take and return a padding mask [B, L] (True = real token) as well.
    """

    def __init__(self, n_units: int, activation: Callable[[], Layer] | None = None,
                 masked: bool = False, mode: str = 'train'):
        if isinstance(n_units, bool) or int(n_units) < 1:
            raise ValueError(f'SRU: n_units must be a positive integer, got {n_units!r}')
        self._n_units, self._masked = int(n_units), bool(masked)
        self._activation = activation() if activation is not None else None
        super().__init__(n_in=2 if masked else 1, n_out=2 if masked else 1,
                         name=f'SRU_{self._n_units}')
        self._mode = check_mode(mode, self.name)

    def draws_random_numbers(self) -> bool:
        return False

    def weight_axes(self) -> tuple:
        return (Axes('embed', None), Axes(None))      # kernel [n, 3n], bias [3n]: n = d_model

    def init_weights_and_state(self, input_signature: Any) -> None:
        shape = (input_signature[0] if self._masked else input_signature).shape
        if len(shape) != 3 or shape[-1] != self._n_units:
            raise ValueError(f'{self.name} expects x [batch, length, {self._n_units}] (the '
                             f'highway adds x to the output), got {tuple(shape)}')
        rng_w, _ = split_rngs(self.rng, 2)
        n = self._n_units
        kernel = init.GlorotUniformInitializer()((n, 3 * n), rng_w)
        self.weights = (kernel, xnp.zeros((3 * n,), kernel.dtype))
        self.state = (xnp.zeros((shape[0], n), kernel.dtype) if self._mode == 'predict'
                      else ())

    def forward(self, inputs: Any) -> Any:
        x, mask = inputs if self._masked else (inputs, None)
        kernel, bias = cast_all_like(self.weights, x)
        n = self._n_units
        if len(x.shape) != 3 or x.shape[-1] != n:
            raise ValueError(f'{self.name} expects x [batch, length, {n}], got {tuple(x.shape)}')
        gates = xnp.matmul(x, kernel) + bias                      # [B, L, 3n]
        r, f, y = gates[..., :n], gates[..., n:2 * n], gates[..., 2 * n:]
        r, f = _sigmoid(r), _sigmoid(f)
        u = (1.0 - f) * y                                         # [B, L, n]
        if mask is not None:
            check_mask_shape(self.name, mask, x.shape[:2])
            real = (mask != 0)[..., None]                         # [B, L, 1]
            f, u = xnp.where(real, f, 1.0), xnp.where(real, u, 0.0)   # padding: c unchanged
        if self._mode == 'predict':
            c0 = self.state
            if tuple(c0.shape) != (x.shape[0], n):
                raise ValueError(f'{self.name}: the predict state was made for batch '
                                 f'{c0.shape[0]}, got x {tuple(x.shape)}')
        else:
            c0 = xnp.zeros((x.shape[0], n), stats_dtype(x.dtype))
        # The cell state sums over the whole sequence: float32 (16-bit gates are widened).
        c, c_last = sru_recurrence(float32_stats(u), float32_stats(f),
                                   float32_stats(c0))             # [B, L, n]
        c = cast_like(c, x)
        if self._mode == 'predict':
            self.state = c_last if c_last.dtype == c0.dtype else c_last.astype(c0.dtype)
        if self._activation is not None:
            c, _ = self._activation.pure_fn(c, (), ())
        h = r * c + (1.0 - r) * x * HIGHWAY_SCALE                 # [B, L, n]
        return (h, mask) if self._masked else h


__all__ = ['SRU', 'sru_recurrence']
