"""Multiplicative and convolutional sparse projections (docs/architecture.md).

- MultiplicativeDense: y[s, m] = Σ_i x_i·D[s, i]·E[i, m] (+ b), the paper's
  multiplicative layer (Trax's FactoredDense): d_in·d_out/S + S·d_in weights.
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
from typing import Any

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_all_like, cast_like
from trax_sparse.layers import initializers as init
from trax_sparse.layers.base import Layer, check_mode, check_positive_int, split_rngs
from trax_sparse.layers.combinators import Serial
from trax_sparse.layers.core import Dense, check_last_axis
from trax_sparse.sharding import Axes


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

    def __init__(self, n_modules: int, d_out: int, use_bias: bool = True,
                 axes: tuple[str | None, str | None] = ('embed', 'mlp')):
        super().__init__(name=f'MultiplicativeDense_{n_modules}_{d_out}')
        self._n_modules = check_positive_int('MultiplicativeDense', 'n_modules', n_modules)
        self._d_out = check_positive_int('MultiplicativeDense', 'd_out', d_out)
        if self._d_out % self._n_modules:
            raise ValueError(f'MultiplicativeDense: d_out={d_out} must be divisible by '
                             f'n_modules={n_modules}')
        self._use_bias = bool(use_bias)
        self._axes = tuple(axes)                      # (d_in's name, d_out's name)

    def weight_axes(self) -> tuple:
        d_in, d_out = self._axes                      # D [S, d_in], E [d_in, M], b [d_out]
        # Output unit s·M + m: the modules S are the output's major axis, so they carry its
        # name (splitting S splits d_out in contiguous blocks, as for a Dense), and the
        # training path's product [S, d_in, M] and the outputs [..., S, M] split with them.
        gate_and_proj = (Axes(d_out, d_in), Axes(d_in, None))
        return gate_and_proj + (Axes(d_out),) if self._use_bias else gate_and_proj

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        # A step still does d_in·d_out multiply-adds (plus the S·d_in gating): it saves
        # weights, not compute.
        n_modules, d_in = weights[0].shape                   # D [S, d_in], E [d_in, M]
        return n_modules * d_in + d_in * int(weights[1].shape[1]) * n_modules

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
        gate, proj = cast_all_like(self.weights[:2], x)
        d_in = gate.shape[1]
        check_last_axis(self, x, d_in)
        n_tokens = x.size // d_in
        if n_tokens * self._n_modules < self._d_out:
            # Few tokens (decoding): read only D and E; the gated copies are small.
            gated = x[..., None, :] * gate                 # [..., S, d_in]
            y = fastmath.parallel_matmul(gated, proj)      # [..., S, M] (S·d_in·M MACs)
            y = y.reshape(x.shape[:-1] + (self._d_out,))   # index s·M + m
        else:
            # Many tokens (training): the [d_in, d_out] product is smaller than T·S·d_in.
            product = gate[:, :, None] * proj              # [S, d_in, M]
            product = xnp.transpose(product, (1, 0, 2)).reshape(d_in, self._d_out)
            y = xnp.matmul(x, product)                     # [..., d_out], index s·M + m
        return y + cast_like(self.weights[2], x) if self._use_bias else y


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
    n_units = check_positive_int(name, 'n_units', n_units)
    if int(sparsity) != sparsity or sparsity < 0:
        raise ValueError(f'{name}: sparsity must be a non-negative integer, got {sparsity!r}')
    if sparsity == 0 or sparsity_type is None:
        return Dense(n_units, axes=('embed', 'vocab'))
    if sparsity_type == 'mult':
        return MultiplicativeDense(int(sparsity), n_units, axes=('embed', 'vocab'))
    if sparsity_type == 'lowrank':
        if d_lowrank is None:
            raise ValueError(f"{name}: sparsity_type='lowrank' needs d_lowrank (the rank)")
        d_lowrank = check_positive_int(name, 'd_lowrank', d_lowrank)
        return Serial(Dense(d_lowrank, axes=('embed', None)), Dense(n_units, axes=(None, 'vocab')),
                      name=f'LowRank_{d_lowrank}')
    raise ValueError(f'{name}: sparsity_type must be one of {SPARSITY_TYPES} or None, got '
                     f'{sparsity_type!r}')


__all__ = ['MultiplicativeDense', 'SparseDenseWithOptions']
