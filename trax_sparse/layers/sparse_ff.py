"""SparseFF: the 1-in-N sparse feed-forward block of Scaling Transformers.

The d_ff hidden units are split into d_ff/N blocks of N units; a low-rank
controller picks exactly one unit per block and token, so decoding reads only
2·d·d_ff/N of the main weights (docs/architecture.md).

Weight layout (the same in every mode): the main weights are stored for the
predict gather, W1ᵀ as [d_ff/N, N, d] and W2 as [d_ff/N, N, d], so each chosen
unit is one contiguous row of d floats (Trax stored W1 as [d, d_ff/N, N], which
turns every gathered unit into a strided column: docs/differences_from_trax.md).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes
    >>> from trax_sparse.layers import SparseFF
    >>> x = np.ones((2, 3, 8), np.float32)
    >>> with fastmath.use_backend('numpy'):
    ...     ff = SparseFF(d_ff=16, n_elements_in_block=4, mode='eval')
    ...     y = ff(x)
    >>> y.shape, ff.state[0].shape     # output, and the unit chosen in each of the 4 blocks
    ((2, 3, 8), (2, 3, 4))
"""
import functools
import inspect
from typing import Any, Callable

import numpy as onp

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like
from trax_sparse.layers import initializers as init
from trax_sparse.layers.base import Layer, check_mode, is_replaying, split_rngs
from trax_sparse.layers.core import Dropout, Relu, check_last_axis
from trax_sparse.layers.sparse_ff_controller import (balance_loss, controller_logits,
                                                     gumbel_choices, one_hot, softmax)
from trax_sparse.sharding import Axes

ArrayFn = Callable[[Any], Any]


def activation_fn(activation: Any, layer_name: str) -> ArrayFn:
    """Turns `activation` into an array function and checks that it maps 0 to 0.

    Accepts a weightless layer (tl.Relu()), a layer constructor (tl.Relu, Trax
    style) or a plain array function. act(0) == 0 is required: a unit that is
    not chosen contributes act(0)·W2 in the masked-dense path and nothing in
    the gather path, so only then do eval and predict agree.
    """
    if not isinstance(activation, Layer) and callable(activation) and _takes_no_arguments(
            activation):
        activation = activation()
    if isinstance(activation, Layer):
        layer = activation
        if layer.n_in != 1 or layer.n_out != 1:
            raise ValueError(f'{layer_name}: the activation layer must map 1 input to 1 output, '
                             f'got {layer.name} with n_in={layer.n_in}, n_out={layer.n_out}')

        def apply(x):
            return layer.pure_fn(x, (), (), fastmath.random.get_prng(0))[0]
    elif callable(activation):
        apply = activation
    else:
        raise ValueError(f'{layer_name}: activation must be a layer, a layer constructor or an '
                         f'array function, got {activation!r}')
    with fastmath.use_backend('numpy'):
        at_zero = onp.asarray(apply(onp.zeros((2,), onp.float32)))
    if not onp.all(at_zero == 0):
        raise ValueError(f'{layer_name}: the activation must map 0 to 0 (ReLU, GELU, ...) so '
                         f'that the predict gather path equals the masked dense path; got '
                         f'act(0) = {at_zero[0]}')
    return apply


def _takes_no_arguments(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and ufuncs without a signature: array functions
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in parameters)


def _itemsize(array: Any) -> int:
    return onp.dtype(array.dtype).itemsize


def split_main(main: tuple) -> tuple:
    """(w1t, w2, b2) or (w1t, b1, w2, b2) -> (w1t, b1 or None, w2, b2)."""
    if len(main) == 4:
        return main
    w1t, w2, b2 = main
    return w1t, None, w2, b2


def masked_dense_hidden(x: Any, mask: Any, main: tuple, act: ArrayFn,
                        mask_after_activation: bool = False) -> Any:
    """act((x W1 [+ b1]) ⊙ mask) over all d_ff units: [..., d] -> [..., d_ff];
    mask_after_activation: act(x W1 [+ b1]) ⊙ mask (equal for a one-hot mask)."""
    w1t, b1, _, _ = split_main(main)
    n_blocks, block_size, d = w1t.shape
    d_ff = n_blocks * block_size
    hidden = xnp.matmul(x, cast_like(w1t, x).reshape(d_ff, d).T)   # [..., d_ff]
    hidden = hidden.reshape(x.shape[:-1] + (n_blocks, block_size))
    if b1 is not None:
        hidden = hidden + cast_like(b1, x)
    hidden = act(hidden) * mask if mask_after_activation else act(hidden * mask)
    # hidden: [..., d_ff/N, N]
    return hidden.reshape(x.shape[:-1] + (d_ff,))


def dense_output(hidden: Any, main: tuple) -> Any:
    """hidden [..., d_ff] @ W2 + b2 -> [..., d]."""
    _, _, w2, b2 = split_main(main)
    n_blocks, block_size, d = w2.shape
    return (xnp.matmul(hidden, cast_like(w2, hidden).reshape(n_blocks * block_size, d))
            + cast_like(b2, hidden))


@functools.lru_cache(maxsize=64)
def _block_starts(n_blocks: int, block_size: int) -> onp.ndarray:
    """The flat row of each block's first unit: [0, N, 2N, ...] (int32, a constant)."""
    return onp.arange(n_blocks, dtype=onp.int32) * onp.int32(block_size)


def gathered_ff(x: Any, choices: Any, main: tuple, act: ArrayFn) -> Any:
    """The predict path: reads only the chosen row of W1ᵀ and of W2 in each block.

    x [..., d], choices [..., d_ff/N] -> [..., d]; per token it reads
    2·d·d_ff/N main weights (one contiguous row of d floats per block and matrix; rows
    stored in 16 bits are cast to x's dtype after the read). The blocks are independent, so large reads go in parts of the blocks, each read
    and finished in one go (`fastmath.in_parts`: threads on NumPy).
    """
    w1t, b1, w2, b2 = split_main(main)
    n_blocks, block_size, d = w1t.shape
    tokens = x.reshape(-1, d)                                             # [T, d]
    rows = choices.reshape(-1, n_blocks) + _block_starts(n_blocks, block_size)  # [T, nb]
    w1_rows, w2_rows = w1t.reshape(-1, d), w2.reshape(-1, d)

    def blocks_output(blocks: slice) -> Any:
        """The chosen units of `blocks`: their share of the output [T, d]."""
        chosen = rows[:, blocks]                                          # [T, nb']
        mid = fastmath.take_rows_dot(w1_rows, chosen, tokens)             # [T, nb']
        if b1 is not None:
            mid = mid + cast_like(xnp.take(b1.reshape(-1), chosen, mode='clip'), mid)
        return fastmath.take_rows_weighted_sum(w2_rows, chosen, act(mid))  # [T, d]

    parts = fastmath.in_parts(blocks_output, n_blocks, 2 * rows.size * d * w1t.dtype.itemsize)
    y = sum(parts[1:], parts[0])                                          # [T, d]
    return (y + cast_like(b2, y)).reshape(x.shape)


class SparseFF(Layer):
    """1-in-N sparse feed-forward: x [..., d] -> [..., d], one active unit per block of N.

    train: Gumbel-max choice per block (temperature τ scales the noise); with
    probability `quant_prob` per call the straight-through mask
    onehot + p − stop_gradient(p) is used, else the soft mask p.
    eval: one-hot of argmax. Both compute act((x W1 [+ b1]) ⊙ mask) W2 + b2
    densely. predict: the gather path (`gathered_ff`), equal to eval (a prefix of
    N or more tokens reads W1 and W2 once with the masked dense path instead).
    kernel_scaling (Trax's option): W2 is initialized sqrt(N) larger, so with one
    active unit per block the output starts at the scale of a dense FF's.
    mask_after_activation (default): act(x W1) ⊙ mask; False: Trax's act((x W1) ⊙ mask).
    The forward pass is the same for a one-hot mask (and, with ReLU, for any mask), but
    the controller then learns the worth act(x W1)·∂L/∂hidden of every unit, not only of
    the chosen one: with the mask inside, ReLU's zero slope at 0 stops the gradient of
    every unit the one-hot mask left out (docs/RESULTS.md §1: 2.67 against 2.48
    nats/byte after 400 steps of the parity setup).
    load_balance: the weight of a term against dead units (`balance_loss`), which the
    training step adds to the loss through `auxiliary_losses` (autodiff only: not inside
    a reversible or chunked layer, whose recomputed backward would drop its gradient).
    State: in train/eval (choices int32 [..., d_ff/N], hard bool[, balance term float32 ()
    with load_balance, 0 in eval]; a soft training call draws no choices and records zeros);
    inside
    `base.replay_context()` these are reused instead of drawn again. In predict
    the state is () (the layer is position-wise, nothing is cached).

    Example:
        >>> import numpy as np
        >>> from trax_sparse import fastmath
        >>> with fastmath.use_backend('numpy'):
        ...     ff = SparseFF(d_ff=32, n_elements_in_block=8, mode='predict')
        ...     ff(np.ones((1, 1, 16), np.float32)).shape
        (1, 1, 16)
    """

    def draws_random_numbers(self) -> bool:
        return self._mode == 'train'          # Gumbel noise, the quantization coin, dropout

    def __init__(self, d_ff: int, n_elements_in_block: int = 32, d_lowrank: int | None = None,
                 temperature: float = 0.1, quant_prob: float = 0.3, dropout: float = 0.0,
                 activation: Any = Relu, use_bias1: bool = False, kernel_scaling: bool = False,
                 mask_after_activation: bool = True, load_balance: float = 0.0,
                 mode: str = 'train'):
        super().__init__(name=f'SparseFF_{d_ff}')
        d_ff, block_size = int(d_ff), int(n_elements_in_block)
        if d_ff < 1 or block_size < 1:
            raise ValueError(f'SparseFF: d_ff and n_elements_in_block must be positive, got '
                             f'd_ff={d_ff}, n_elements_in_block={block_size}')
        if d_ff % block_size:
            raise ValueError(f'SparseFF: d_ff={d_ff} must be divisible by '
                             f'n_elements_in_block={block_size}')
        d_lowrank = d_ff // block_size if d_lowrank is None else int(d_lowrank)
        if d_lowrank < 1:
            raise ValueError(f'SparseFF: d_lowrank must be positive, got {d_lowrank}')
        if temperature < 0:
            raise ValueError(f'SparseFF: temperature must be >= 0, got {temperature}')
        if load_balance < 0:
            raise ValueError(f'SparseFF: load_balance must be >= 0, got {load_balance}')
        if not 0.0 <= quant_prob <= 1.0:
            raise ValueError(f'SparseFF: quant_prob must be in [0, 1], got {quant_prob}')
        self._d_ff, self._block_size, self._d_lowrank = d_ff, block_size, d_lowrank
        self._temperature, self._quant_prob = float(temperature), float(quant_prob)
        self._use_bias1 = bool(use_bias1)
        self._kernel_scaling = bool(kernel_scaling)
        self._mask_after_activation = bool(mask_after_activation)
        self._load_balance = float(load_balance)
        self._mode = check_mode(mode, 'SparseFF')
        self._act = activation_fn(activation, 'SparseFF')
        self._dropout = Dropout(dropout, mode=mode)

    @property
    def n_blocks(self) -> int:
        return self._d_ff // self._block_size

    @property
    def activation(self) -> Callable:
        """The hidden units' activation as an array function (act(0) == 0)."""
        return self._act

    def auxiliary_losses(self, state: Any) -> tuple:
        return tuple(state[2:3])                  # the balance term, with load_balance

    def weight_axes(self) -> tuple:
        # controller: W_c1 [d, r], W_c2 [r, d_ff], b_c [d_ff]; main: W1ᵀ and W2 [d_ff/N, N, d]
        # (+ b1 [d_ff/N, N]) and b2 [d]: the blocks split like a dense FF's units.
        controller = (Axes('embed', 'lowrank'), Axes('lowrank', 'mlp'), Axes('mlp'))
        rows = Axes('mlp', 'block', 'embed')
        main = (rows, Axes('mlp', 'block'), rows, Axes('embed')) if self._use_bias1 else \
            (rows, rows, Axes('embed'))
        return (controller, main)

    def bytes_read_per_step(self, weights: Any) -> int:
        # The controller, then per block the chosen row of W1ᵀ and of W2 (+ its b1), and b2;
        # each at its own itemsize (decoding may store the rows alone in 16 bits).
        controller, main = weights
        w1t, b1, w2, b2 = split_main(main)
        n_blocks, d = w1t.shape[0], w1t.shape[-1]
        chosen = n_blocks * d * (_itemsize(w1t) + _itemsize(w2)) + d * _itemsize(b2)
        if b1 is not None:
            chosen += n_blocks * _itemsize(b1)
        return chosen + sum(int(onp.prod(c.shape)) * _itemsize(c) for c in controller)

    def gathered_weights(self, weights: Any) -> tuple:
        w1t, b1, w2, _ = split_main(weights[1])     # the rows; b2 and the controller: dense
        return tuple(w for w in (w1t, b1, w2) if w is not None)

    def macs_per_step(self, weights: Any, n_keys: int = 1, kv_width: int = 0) -> int:
        controller, main = weights                  # the controller's two matrices, the rows
        n_blocks, d = main[0].shape[0], main[0].shape[-1]
        return sum(int(onp.prod(c.shape)) for c in controller[:2]) + 2 * n_blocks * d

    def init_weights_and_state(self, input_signature: Any) -> None:
        if not input_signature.shape:
            raise ValueError(f'{self.name} needs inputs [..., d], got a scalar')
        d = input_signature.shape[-1]
        nb, n, r = self.n_blocks, self._block_size, self._d_lowrank
        glorot, small = init.GlorotUniformInitializer(), init.RandomNormalInitializer(1e-6)
        rngs = split_rngs(self.rng, 7)
        controller = (glorot((d, r), rngs[0]), glorot((r, self._d_ff), rngs[1]),
                      small((self._d_ff,), rngs[2]))
        # Glorot over [d_ff, d] equals Glorot over [d, d_ff] (fan_avg is symmetric).
        w1t = glorot((self._d_ff, d), rngs[3]).reshape(nb, n, d)     # [d_ff/N, N, d]
        w2 = glorot((self._d_ff, d), rngs[4]).reshape(nb, n, d)      # [d_ff/N, N, d]
        if self._kernel_scaling:      # one unit of N is active: W2 starts sqrt(N) larger
            w2 = w2 * xnp.asarray(onp.sqrt(n), w2.dtype)
        b2 = small((d,), rngs[5])
        main = (w1t, small((nb, n), rngs[6]), w2, b2) if self._use_bias1 else (w1t, w2, b2)
        self.weights = (controller, main)
        if self._mode == 'predict':
            self.state = ()
        else:
            self.state = (xnp.zeros(input_signature.shape[:-1] + (nb,), xnp.int32),
                          xnp.zeros((), xnp.bool_)) + self._balance_state(None)

    def forward(self, x: Any) -> Any:
        controller, main = self.weights
        check_last_axis(self, x, main[0].shape[-1])
        lead = x.shape[:-1]
        # Tokens as rows [T, d]: XLA:CPU differentiated the [B, L, d_ff/N, N] form of the
        # masks below ~1.8x slower than this 2-D one (batch 8 x 128, d 256, d_ff 1344).
        tokens = x.reshape(-1, x.shape[-1])                              # [T, d]
        logits = controller_logits(tokens, controller, self.n_blocks, self._block_size)
        if self._mode == 'predict':
            choices = xnp.argmax(logits, axis=-1).astype(xnp.int32)     # [T, nb]
            if tokens.shape[0] >= self._block_size:
                # A long prefix would gather more rows than W1 has: read W1 once instead.
                y = dense_output(masked_dense_hidden(
                    tokens, one_hot(choices, self._block_size, x.dtype), main, self._act), main)
                return y.reshape(x.shape)
            return gathered_ff(x, choices, main, self._act)
        rng_noise, rng_coin, rng_dropout = split_rngs(self.rng, 3)
        if is_replaying():
            choices, hard = self._recorded_choices(lead)
        elif self._mode == 'train':
            hard = fastmath.random.uniform(rng_coin, ()) < self._quant_prob
            # The soft mask needs no draw: only a hard call samples (the state then holds
            # zeros), which spares the sampling in 1 - quant_prob of the training calls.
            choices = fastmath.cond(
                hard, lambda logits: gumbel_choices(logits, self._temperature, rng_noise),
                lambda logits: xnp.zeros(logits.shape[:-1], xnp.int32), logits)
        else:
            choices, hard = xnp.argmax(logits, axis=-1).astype(xnp.int32), xnp.ones((), xnp.bool_)
        probs = softmax(logits) if self._mode == 'train' else None      # [T, nb, N]
        self.state = (choices.reshape(lead + (self.n_blocks,)), hard) + self._balance_state(
            logits, probs)
        mask = one_hot(choices, self._block_size, x.dtype)               # [T, nb, N]
        if self._mode == 'train':
            # Forward: the one-hot (hard) or p (soft); backward: through p either way. One
            # differentiable term instead of where(hard, onehot + p - sg(p), p), which made
            # XLA differentiate both branches over [T, d_ff].
            mask = probs + fastmath.stop_gradient(xnp.where(hard, mask - probs, 0.0))
            mask = cast_like(mask, x)             # the float32 mask in the compute dtype
        hidden = masked_dense_hidden(tokens, mask, main, self._act,
                                     self._mask_after_activation)     # [T, d_ff]
        hidden, _ = self._dropout.pure_fn(hidden, (), (), rng_dropout)
        return dense_output(hidden, main).reshape(x.shape)

    def _balance_state(self, logits: Any, probs: Any = None) -> tuple:
        """The state's balance entry: () without load_balance; its value in train (from the
        logits and their softmax `probs`), 0 in eval and at init (logits None)."""
        if not self._load_balance:
            return ()
        if self._mode != 'train' or logits is None:
            return (xnp.zeros((), xnp.float32),)
        if is_replaying():
            raise ValueError(f'{self.name}: load_balance={self._load_balance} needs plain '
                             f'autodiff; inside a reversible or chunked layer its recomputed '
                             f'backward would drop the balance term\'s gradient')
        return (self._load_balance * balance_loss(logits, probs),)

    def _recorded_choices(self, lead: tuple) -> tuple[Any, Any]:
        """The (choices [T, nb], hard) of the forward pass being replayed."""
        if not self.state:
            raise ValueError(f'{self.name}: replaying needs the state of a forward pass, got an '
                             f'empty state')
        choices, hard = self.state[:2]
        if tuple(choices.shape) != tuple(lead) + (self.n_blocks,):
            raise ValueError(f'{self.name}: replaying needs recorded choices of shape '
                             f'{tuple(lead) + (self.n_blocks,)}, the state holds '
                             f'{tuple(choices.shape)}')
        return choices.reshape(-1, self.n_blocks), hard


__all__ = ['SparseFF']
