"""The convolutions of sparse QKV: over (length, modules), weights shared by the modules.

- LocallyConvDense: x [B, L, d] viewed as [B, L, S, d/S], one 2-D convolution, causal
  along the length, centred and zero-padded along the modules; a predict memory of the
  last length_kernel_size - 1 inputs.
- LocallyConvDenseBranch: Branch(LocallyConvDense(k) for k in kernel_sizes) over one
  input as one layer: the same weights and outputs, one memory, one matmul in training.

Both compute with one of three equal formulations (`local_convolutions`): gathered
patches and a matmul (few tokens: decoding), stacked shifted views and one matmul for all
the kernels (many tokens, wide modules), or the backend's convolution op (narrow modules).
The choice follows `fastmath.tuning()` (conv_patches_max_tokens,
conv_stacked_taps_min_width; measurements in docs/performance.md).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> from trax_sparse.layers import LocallyConvDenseBranch
    >>> with fastmath.use_backend('numpy'):
    ...     q, k, v = LocallyConvDenseBranch(4, 2, (3, 3, 1))(np.ones((1, 5, 8), np.float32))
    >>> q.shape, v.shape
    ((1, 5, 8), (1, 5, 8))
"""
import functools
from typing import Any, Sequence

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like
from trax_sparse.layers import initializers as init
from trax_sparse.layers.base import Layer, check_mode, check_positive_int, split_rngs
from trax_sparse.sharding import Axes

# A kernel [lk, k, d/S, n_units] shared by the S modules and its bias [n_units]: the taps
# (lk, k) are never split.
_KERNEL_AND_BIAS_AXES = (Axes(None, None, 'kv', 'heads'), Axes('heads'))


def _odd_kernel_size(value: Any, layer_name: str) -> int:
    value = check_positive_int(layer_name, 'kernel_size', value)
    if value % 2 == 0:
        raise ValueError(f'{layer_name}: kernel_size (across modules) must be odd so the kernel '
                         f'is centred on its module, got {value}')
    return value


class _LocalConvBase(Layer):
    """Shared by both layers: arguments, the input check and the causal window."""

    def draws_random_numbers(self) -> bool:
        return False

    def __init__(self, layer_name: str, n_modules: int, n_units: int,
                 kernel_sizes: Sequence[int], length_kernel_size: int, mode: str, n_out: int):
        super().__init__(n_out=n_out, name=f'{layer_name}_{n_modules}_{n_units}')
        self._n_modules = check_positive_int(layer_name, 'n_modules', n_modules)
        self._n_units = check_positive_int(layer_name, 'n_units', n_units)
        self._kernel_sizes = tuple(_odd_kernel_size(k, layer_name) for k in kernel_sizes)
        self._length_kernel_size = check_positive_int(layer_name, 'length_kernel_size',
                                                      length_kernel_size)
        self._mode = check_mode(mode, layer_name)

    @property
    def n_modules(self) -> int:
        """S: the number of modules the kernels are shared by."""
        return self._n_modules

    def weight_axes(self) -> Any:
        # kernel [lk, k, d/S, units] shared by the S modules, bias [units]: taps never split.
        return tuple(_KERNEL_AND_BIAS_AXES for _ in self._kernel_sizes)

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        # Each kernel [lk, k, d/S, units] once per module (the S modules share it).
        return sum(int(onp.prod(kernel.shape)) for kernel in self._kernels(weights)) * \
            self._n_modules

    def _kernels(self, weights: Any) -> list:
        return [kernel for kernel, _ in weights]          # ((kernel, bias) per kernel size)

    def _init_kernels(self, input_signature: Any, rngs: Sequence[Any]) -> list:
        """[(kernel [lk, k, d/S, n_units], bias [n_units])] per kernel size (and its rng);
        sets the state."""
        if input_signature.ndim != 3:
            raise ValueError(f'{self.name} expects inputs [batch, length, d], got shape '
                             f'{input_signature.shape}')
        batch, _, d = input_signature.shape
        if d % self._n_modules:
            raise ValueError(f'{self.name}: the input width {d} must be divisible by '
                             f'n_modules={self._n_modules}')
        d_module, lk = d // self._n_modules, self._length_kernel_size
        if self._mode == 'predict':
            self.state = xnp.zeros((batch, lk - 1, self._n_modules, d_module),
                                   input_signature.dtype)
        else:
            self.state = ()
        return [kernel_and_bias(lk, k, d_module, self._n_units, rng)
                for k, rng in zip(self._kernel_sizes, rngs)]

    def _window(self, x: Any, d_module: int) -> Any:
        """x [B, L, S·c] -> window [B, lk - 1 + L, S, c]: the memory (predict) or zeros first."""
        lk = self._length_kernel_size
        if x.ndim != 3 or x.shape[-1] != self._n_modules * d_module:
            raise ValueError(f'{self.name} expects inputs [batch, length, '
                             f'{self._n_modules * d_module}], got shape {tuple(x.shape)}')
        batch, length, _ = x.shape
        x4 = x.reshape(batch, length, self._n_modules, d_module)        # [B, L, S, c]
        if self._mode != 'predict':
            return zero_pad(x4, axis=1, before=lk - 1, after=0)        # causal: past only
        memory = self.state                                             # [B, lk-1, S, c]
        if memory.shape[0] != batch:
            raise ValueError(f'{self.name}: predict state was initialized for batch '
                             f'{memory.shape[0]}, got batch {batch}')
        window = xnp.concatenate([_as_dtype(memory, x4.dtype), x4], axis=1)
        self.state = _as_dtype(window[:, window.shape[1] - (lk - 1):], memory.dtype)
        return window

    def _outputs(self, x: Any, kernels_and_biases: Sequence[tuple]) -> list:
        """The convolutions of x [B, L, d] with every (kernel, bias): [B, L, S·n_units] each."""
        batch, length = x.shape[:2]
        window = self._window(x, kernels_and_biases[0][0].shape[2])
        ys = local_convolutions(window, [cast_like(kernel, x) for kernel, _ in kernels_and_biases])
        return [(y + cast_like(bias, x)).reshape(batch, length, self._n_modules * self._n_units)
                for y, (_, bias) in zip(ys, kernels_and_biases)]


def kernel_and_bias(lk: int, k: int, d_module: int, n_units: int, rng: Any) -> tuple:
    """One convolution's weights: Glorot kernel [lk, k, d_module, n_units], tiny bias."""
    rng_kernel, rng_bias = split_rngs(rng, 2)
    return (init.GlorotUniformInitializer()((lk, k, d_module, n_units), rng_kernel),
            init.RandomNormalInitializer(1e-6)((n_units,), rng_bias))


class LocallyConvDense(_LocalConvBase):
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

    def __init__(self, n_modules: int, n_units: int, kernel_size: int = 1,
                 length_kernel_size: int = 1, mode: str = 'train'):
        super().__init__('LocallyConvDense', n_modules, n_units, (kernel_size,),
                         length_kernel_size, mode, n_out=1)

    def init_weights_and_state(self, input_signature: Any) -> None:
        self.weights = self._init_kernels(input_signature, [self.rng])[0]   # (kernel, bias)

    def _kernels(self, weights: Any) -> list:
        return [weights[0]]

    def weight_axes(self) -> tuple:
        return _KERNEL_AND_BIAS_AXES

    def forward(self, x: Any) -> Any:
        return self._outputs(x, [self.weights])[0]


class LocallyConvDenseBranch(_LocalConvBase):
    """x [B, L, d] -> one LocallyConvDense output per kernel size, as one layer.

    Equals Branch(*[LocallyConvDense(n_modules, n_units, k, length_kernel_size)
    for k in kernel_sizes]): the same weights tree ((kernel, bias) per
    convolution), initial values and outputs. It keeps one predict memory instead of
    one per convolution, and with wide modules (`fastmath.tuning()`'s
    conv_stacked_taps_min_width features) runs all the convolutions of a long call as one
    matmul (the narrower kernels zero-padded to the widest): on XLA:CPU sparse QKV's
    (3, 3, 1) train in about 0.6 of the time of three
    separate ones.

    Example:
        >>> LocallyConvDenseBranch(4, 16, kernel_sizes=(3, 3, 1)).n_out
        3
    """

    def __init__(self, n_modules: int, n_units: int, kernel_sizes: Sequence[int] = (3, 3, 1),
                 length_kernel_size: int = 1, mode: str = 'train'):
        if not kernel_sizes:
            raise ValueError('LocallyConvDenseBranch: kernel_sizes must name at least one '
                             'convolution')
        super().__init__('LocallyConvDenseBranch', n_modules, n_units, kernel_sizes,
                         length_kernel_size, mode, n_out=len(kernel_sizes))

    def init_weights_and_state(self, input_signature: Any) -> None:
        # One key per convolution, split as Branch splits its rng among sublayers.
        rngs = split_rngs(self.rng, len(self._kernel_sizes))
        self.weights = tuple(self._init_kernels(input_signature, rngs))

    def forward(self, x: Any) -> Any:
        outputs = self._outputs(x, self.weights)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def local_convolutions(window: Any, kernels: Sequence[Any]) -> list:
    """window [B, lk-1+L, S, c], kernels [lk, k_i, c, u_i] -> [B, L, S, u_i] per kernel.

    Few tokens (at most `tuning().conv_patches_max_tokens`): one gathered-patches matmul
    per kernel (large ones shared among NumPy's threads: `fastmath.parallel_matmuls`).
    More tokens and modules of at least `tuning().conv_stacked_taps_min_width` features:
    one matmul of the stacked taps with the kernels zero-padded to the widest k and
    concatenated along the units (then split). Narrower modules: the convolution op, once
    per kernel. All three give the same numbers.
    """
    batch, steps, _, c = window.shape
    lk, settings = kernels[0].shape[0], fastmath.tuning()
    if batch * (steps - (lk - 1)) <= settings.conv_patches_max_tokens:
        patches = {k: local_patches(window, lk, k)                         # [B, L, S, lk·k·c]
                   for k in sorted({kernel.shape[1] for kernel in kernels})}
        return fastmath.parallel_matmuls([(patches[kernel.shape[1]],
                                           kernel.reshape(-1, kernel.shape[-1]))
                                          for kernel in kernels])
    if c < settings.conv_stacked_taps_min_width:
        padded = {k: zero_pad(window, axis=2, before=(k - 1) // 2, after=(k - 1) // 2)
                  for k in {kernel.shape[1] for kernel in kernels}}       # [B, ., S+k-1, c]
        return [fastmath.conv(padded[kernel.shape[1]], kernel, padding='VALID')   # [B, L, S, u]
                for kernel in kernels]
    k = max(kernel.shape[1] for kernel in kernels)
    combined = xnp.concatenate([zero_pad(kernel, axis=1, before=(k - kernel.shape[1]) // 2,
                                         after=(k - kernel.shape[1]) // 2)
                                for kernel in kernels], axis=-1)          # [lk, k, c, Σu]
    y = xnp.matmul(stacked_taps(window, lk, k), combined.reshape(lk * k * c, -1))
    if len(kernels) == 1:
        return [y]                                                        # [B, L, S, u]
    ends = onp.cumsum([kernel.shape[-1] for kernel in kernels])
    return [y[..., end - kernel.shape[-1]:end] for end, kernel in zip(ends, kernels)]


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


def stacked_taps(window: Any, lk: int, k: int) -> Any:
    """The patches of `local_patches` by slicing: lk·k shifted views, concatenated.

    window [B, L + lk - 1, S, c] -> [B, L, S, lk·k·c] (same order as `local_patches`).
    Slices and a concatenation differentiate into slices and sums, not into a scatter.
    """
    steps, modules = window.shape[1], window.shape[2]
    length, half = steps - (lk - 1), (k - 1) // 2
    padded = zero_pad(window, axis=2, before=half, after=half)      # [B, L+lk-1, S+k-1, c]
    return xnp.concatenate([padded[:, a:a + length, j:j + modules]
                            for a in range(lk) for j in range(k)], axis=-1)


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


__all__ = ['LocallyConvDense', 'LocallyConvDenseBranch']
