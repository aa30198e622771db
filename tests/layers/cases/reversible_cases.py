"""Registry cases for the reversible layers (gradient checks run through their custom backward)."""
from typing import Any

from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like
from trax_sparse.sharding import Axes
from tests.layers.cases import Case, floats


class ExpScale(tl.ReversibleLayer):
    """x -> x * exp(s), s [d] a weight: a ReversibleLayer using the default reverse_and_grad."""

    def weight_axes(self) -> tuple:
        return (Axes('embed'),)

    def init_weights_and_state(self, input_signature: Any) -> None:
        self.weights = (0.1 * xnp.arange(input_signature.shape[-1], dtype=xnp.float32),)
        self.state = ()

    def forward(self, x: Any) -> Any:
        return x * cast_like(xnp.exp(self.weights[0]), x)   # the policy: weights in x's dtype

    def reverse(self, output: Any, weights: Any = (), state: Any = (), new_state: Any = (),
                rng: Any = None) -> Any:
        return output * cast_like(xnp.exp(-weights[0]), output)


def revnet_block(d: int, d_ff: int, mode: str = 'eval', dropout: float = 0.0) -> list:
    """[HalfResidual(LayerNorm, Dense), Swap, HalfResidual(Dense, Relu, Dropout, Dense), Swap]."""
    return [tl.ReversibleHalfResidual(tl.LayerNorm(), tl.Dense(d)),
            tl.ReversibleSwap(),
            tl.ReversibleHalfResidual(tl.Dense(d_ff), tl.Relu(), tl.Dropout(dropout, mode=mode),
                                      tl.Dense(d)),
            tl.ReversibleSwap()]


def _two(d: int = 3):
    return lambda: (floats(2, d), floats(2, d, seed=1))


CASES = [
    Case('ReversibleSerial', lambda mode: tl.ReversibleSerial(revnet_block(3, 5, mode, 0.5)),
         _two()),
    Case('ReversibleSerial', lambda mode: tl.ReversibleSerial(
        revnet_block(3, 4, mode), ExpScale(), revnet_block(3, 4, mode)),
         _two(), id='ReversibleSerial_two_blocks'),
    Case('ReversibleHalfResidual', lambda mode: tl.ReversibleHalfResidual(tl.Dense(3)), _two()),
    # A residual over two context items: [acc, a, b] -> [acc + Dense(a + b), a, b].
    Case('ReversibleHalfResidual', lambda mode: tl.ReversibleHalfResidual(tl.Add(), tl.Dense(3)),
         lambda: (floats(2, 3), floats(2, 4, seed=1), floats(2, 4, seed=2)),
         id='ReversibleHalfResidual_two_context_items'),
    Case('ReversibleSwap', lambda mode: tl.ReversibleSwap(), _two(), grad_check=False),
    Case('ReversibleSelect', lambda mode: tl.ReversibleSelect([2, 0, 1]),
         lambda: (floats(2, 3), floats(2, 1, seed=1), floats(2, 2, seed=2)), grad_check=False),
    Case('ReversibleLayer', lambda mode: ExpScale(), lambda: floats(2, 4)),
]
