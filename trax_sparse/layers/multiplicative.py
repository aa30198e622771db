"""Multiplicative and convolutional sparse projections (docs/architecture.md).

- MultiplicativeDense: y[s, m] = Σ_i x_i·D[s, i]·E[i, m] (+ b), the paper's
  multiplicative layer (Trax's FactoredDense): d_in·d_out/S + S·d_in weights.
- LocallyConvDense: a 2-D convolution over (length, modules) with weights
  shared across modules, causal along the length, with a predict memory.
- SparseDenseWithOptions: the sparse loss layer (dense, 'mult' or 'lowrank').

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> from trax_sparse.layers import MultiplicativeDense
    >>> with fastmath.use_backend('numpy'):
    ...     layer = MultiplicativeDense(n_modules=4, d_out=8)
    ...     y = layer(np.ones((2, 3, 6), np.float32))
    >>> y.shape, [w.shape for w in layer.weights]
    ((2, 3, 8), [(4, 6), (6, 2), (8,)])
"""
import functools
from typing import Any

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers import initializers as init
from trax_sparse.layers.base import Layer, check_mode, split_rngs
from trax_sparse.layers.combinators import Serial
from trax_sparse.layers.core import Dense, check_last_axis


def _positive_int(value: Any, what: str, layer_name: str) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f'{layer_name}: {what} must be a positive integer, got {value!r}')
    return int(value)


class MultiplicativeDense(Layer):
    """x [..., d_in] -> y [..., d_out], y[..., s·M + m] = Σ_i x_i·D[s, i]·E[i, m] + b[s·M + m].

    D [S, d_in] gates the input once per module s, E [d_in, M] (M = d_out/S) is
    shared by all modules. Weights: (D, E, b) or (D, E) without bias. With fewer
    than M tokens per call (decoding) it reads only D and E; with more it forms
    the d_in × d_out product once, which is smaller than the T·S·d_in gated inputs.

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath
        >>> with fastmath.use_backend('numpy'):
        ...     MultiplicativeDense(2, 4, use_bias=False)(np.ones((1, 3), np.float32)).shape
        (1, 4)
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, n_modules: int, d_out: int, use_bias: bool = True):
        super().__init__(name=f'MultiplicativeDense_{n_modules}_{d_out}')
        self._n_modules = _positive_int(n_modules, 'n_modules', 'MultiplicativeDense')
        self._d_out = _positive_int(d_out, 'd_out', 'MultiplicativeDense')
        if self._d_out % self._n_modules:
            raise ValueError(f'MultiplicativeDense: d_out={d_out} must be divisible by '
                             f'n_modules={n_modules}')
        self._use_bias = bool(use_bias)

    def init_weights_and_state(self, input_signature: Any) -> None:
        if not input_signature.shape:
            raise ValueError(f'{self.name} needs inputs [..., d_in], got a scalar')
        d_in, s = input_signature.shape[-1], self._n_modules
        rng_gate, rng_proj, rng_bias = split_rngs(self.rng, 3)
        gate = init.RandomNormalInitializer(0.5)((s, d_in), rng_gate)          # D [S, d_in]
        proj = init.GlorotUniformInitializer()((d_in, self._d_out // s), rng_proj)  # E [d_in, M]
        bias = init.RandomNormalInitializer(1e-6)((self._d_out,), rng_bias)
        self.weights = (gate, proj, bias) if self._use_bias else (gate, proj)
        self.state = ()

    def forward(self, x: Any) -> Any:
        gate, proj = self.weights[:2]
        d_in = gate.shape[1]
        check_last_axis(self, x, d_in)
        n_tokens = x.size // d_in
        if n_tokens * self._n_modules < self._d_out:
            # Few tokens (decoding): read only D and E; the gated copies are small.
            gated = x[..., None, :] * gate                 # [..., S, d_in]
            y = xnp.matmul(gated, proj)                    # [..., S, M]
            y = y.reshape(x.shape[:-1] + (self._d_out,))   # index s·M + m
        else:
            # Many tokens (training): the [d_in, d_out] product is smaller than T·S·d_in.
            product = gate[:, :, None] * proj              # [S, d_in, M]
            product = xnp.transpose(product, (1, 0, 2)).reshape(d_in, self._d_out)
            y = xnp.matmul(x, product)                     # [..., d_out], index s·M + m
        return y + self.weights[2] if self._use_bias else y


class LocallyConvDense(Layer):
    """Conv over (length, modules) of x [B, L, d] viewed as [B, L, S, d/S] -> [B, L, S·n_units].

    The kernel [length_kernel_size, kernel_size, d/S, n_units] is shared by all
    modules. Along the length it is causal (only past positions are padded);
    along the modules it is centred and zero-padded, so kernel_size must be odd.
    In predict mode the state keeps the last length_kernel_size − 1 inputs
    [B, lk − 1, S, d/S], so feeding tokens one at a time equals the full sequence.

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath
        >>> with fastmath.use_backend('numpy'):
        ...     conv = LocallyConvDense(4, 3, kernel_size=3, length_kernel_size=3)
        ...     conv(np.ones((2, 5, 8), np.float32)).shape
        (2, 5, 12)
    """

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, n_modules: int, n_units: int, kernel_size: int = 1,
                 length_kernel_size: int = 1, mode: str = 'train'):
        name = 'LocallyConvDense'
        super().__init__(name=f'{name}_{n_modules}_{n_units}')
        self._n_modules = _positive_int(n_modules, 'n_modules', name)
        self._n_units = _positive_int(n_units, 'n_units', name)
        self._kernel_size = _positive_int(kernel_size, 'kernel_size', name)
        self._length_kernel_size = _positive_int(length_kernel_size, 'length_kernel_size', name)
        if self._kernel_size % 2 == 0:
            raise ValueError(f'{name}: kernel_size (across modules) must be odd so the kernel is '
                             f'centred on its module, got {kernel_size}')
        self._mode = check_mode(mode, name)

    @property
    def n_modules(self) -> int:
        """S: the number of modules the kernel is shared by."""
        return self._n_modules

    def _module_width(self, d: int) -> int:
        if d % self._n_modules:
            raise ValueError(f'{self.name}: the input width {d} must be divisible by '
                             f'n_modules={self._n_modules}')
        return d // self._n_modules

    def init_weights_and_state(self, input_signature: Any) -> None:
        if input_signature.ndim != 3:
            raise ValueError(f'{self.name} expects inputs [batch, length, d], got shape '
                             f'{input_signature.shape}')
        batch, _, d = input_signature.shape
        d_module, lk = self._module_width(d), self._length_kernel_size
        rng_kernel, rng_bias = split_rngs(self.rng, 2)
        kernel = init.GlorotUniformInitializer()(
            (lk, self._kernel_size, d_module, self._n_units), rng_kernel)
        bias = init.RandomNormalInitializer(1e-6)((self._n_units,), rng_bias)
        self.weights = (kernel, bias)
        if self._mode == 'predict':
            self.state = xnp.zeros((batch, lk - 1, self._n_modules, d_module),
                                   input_signature.dtype)
        else:
            self.state = ()

    def forward(self, x: Any) -> Any:
        kernel, bias = self.weights
        lk, k, d_module, _ = kernel.shape
        if x.ndim != 3 or x.shape[-1] != self._n_modules * d_module:
            raise ValueError(f'{self.name} expects inputs [batch, length, '
                             f'{self._n_modules * d_module}], got shape {tuple(x.shape)}')
        batch, length, _ = x.shape
        x4 = x.reshape(batch, length, self._n_modules, d_module)       # [B, L, S, d/S]
        if self._mode == 'predict':
            memory = self.state                                         # [B, lk-1, S, d/S]
            if memory.shape[0] != batch:
                raise ValueError(f'{self.name}: predict state was initialized for batch '
                                 f'{memory.shape[0]}, got batch {batch}')
            window = xnp.concatenate([_as_dtype(memory, x4.dtype), x4], axis=1)
            self.state = _as_dtype(window[:, window.shape[1] - (lk - 1):], memory.dtype)
        else:
            window = zero_pad(x4, axis=1, before=lk - 1, after=0)      # causal: past only
        if batch * length <= SMALL_CALL_TOKENS:                         # window [B, lk-1+L, S, c]
            y = xnp.matmul(local_patches(window, lk, k),                # [B, L, S, lk·k·c]
                           kernel.reshape(lk * k * d_module, -1))       # [B, L, S, n_units]
        else:
            half = (k - 1) // 2
            window = zero_pad(window, axis=2, before=half, after=half)  # [B, lk-1+L, S+k-1, c]
            y = fastmath.conv(window, kernel, padding='VALID')         # [B, L, S, n_units]
        return (y + bias).reshape(batch, length, self._n_modules * self._n_units)


# Up to this many tokens per call (decoding steps) the convolution is one matmul over
# the gathered patches: a few cheap ops instead of a general convolution call.
SMALL_CALL_TOKENS = 16


def _as_dtype(x: Any, dtype: Any) -> Any:
    return x if x.dtype == dtype else x.astype(dtype)


def zero_pad(x: Any, axis: int, before: int, after: int) -> Any:
    """Pads one axis with zeros by concatenation (np.pad costs ~90 µs per call)."""
    if before == 0 and after == 0:
        return x
    pads = []
    for n in (before, after):
        shape = list(x.shape)
        shape[axis] = n
        pads.append(xnp.zeros(tuple(shape), x.dtype))
    return xnp.concatenate([pads[0], x, pads[1]], axis=axis)


def local_patches(window: Any, lk: int, k: int) -> Any:
    """The patches of a 'VALID' length conv and a centred, zero-padded module conv, gathered.

    window [B, L + lk - 1, S, c] -> [B, L, S, lk·k·c]: for output (t, s) the inputs at
    lengths t..t+lk-1 and modules s-(k-1)/2..s+(k-1)/2 (zeros outside), in the order of a
    kernel [lk, k, c, u] flattened to [lk·k·c, u]. One gather with a constant index
    (`_patch_index`) instead of padding the modules and stacking lk·k shifted views
    (~20 array ops a decoding step, per convolution).
    """
    batch, steps, modules, c = window.shape
    length = steps - (lk - 1)
    rows = window.reshape(batch, steps * modules, c)
    rows = xnp.concatenate([rows, xnp.zeros((batch, 1, c), rows.dtype)], axis=1)  # + a zero row
    patches = xnp.take(rows, _patch_index(length, modules, lk, k), axis=1)  # [B, L·S·lk·k, c]
    return patches.reshape(batch, length, modules, lk * k * c)


@functools.lru_cache(maxsize=64)
def _patch_index(length: int, modules: int, lk: int, k: int) -> onp.ndarray:
    """Row of `local_patches`' flattened window for each (t, s, a, j); the zero row outside."""
    t, s, a, j = onp.meshgrid(onp.arange(length), onp.arange(modules), onp.arange(lk),
                              onp.arange(k), indexing='ij')
    module = s + j - (k - 1) // 2
    inside = (module >= 0) & (module < modules)
    index = onp.where(inside, (t + a) * modules + module, (length + lk - 1) * modules)
    return index.reshape(-1).astype(onp.int32)


SPARSITY_TYPES = ('mult', 'lowrank')


def SparseDenseWithOptions(n_units: int, sparsity_type: str | None = 'mult',  # noqa: N802
                           sparsity: int = 0, d_lowrank: int | None = None,
                           mode: str = 'train') -> Layer:
    """The sparse loss layer: x [..., d] -> logits [..., n_units].

    sparsity == 0 (or sparsity_type None): Dense(n_units);
    'mult': MultiplicativeDense(sparsity, n_units);
    'lowrank': Dense(d_lowrank) -> Dense(n_units).
    The log-softmax belongs to the loss (CrossEntropyLoss takes logits).

    Example:
        >>> SparseDenseWithOptions(32, 'mult', sparsity=4).name
        'MultiplicativeDense_4_32'
    """
    name = 'SparseDenseWithOptions'
    check_mode(mode, name)
    n_units = _positive_int(n_units, 'n_units', name)
    if int(sparsity) != sparsity or sparsity < 0:
        raise ValueError(f'{name}: sparsity must be a non-negative integer, got {sparsity!r}')
    if sparsity == 0 or sparsity_type is None:
        return Dense(n_units)
    if sparsity_type == 'mult':
        return MultiplicativeDense(int(sparsity), n_units)
    if sparsity_type == 'lowrank':
        if d_lowrank is None:
            raise ValueError(f"{name}: sparsity_type='lowrank' needs d_lowrank (the rank)")
        d_lowrank = _positive_int(d_lowrank, 'd_lowrank', name)
        return Serial(Dense(d_lowrank), Dense(n_units), name=f'LowRank_{d_lowrank}')
    raise ValueError(f'{name}: sparsity_type must be one of {SPARSITY_TYPES} or None, got '
                     f'{sparsity_type!r}')


__all__ = ['LocallyConvDense', 'MultiplicativeDense', 'SparseDenseWithOptions']
