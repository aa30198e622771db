"""Registry of every public layer with a tiny case (one module per area).

Each area module exports CASES: a list of `Case`. `all_cases()` gathers them;
tests/layers/test_contracts.py runs the generic properties over all of them
and fails when a public name of `trax_sparse.layers` has no case.
"""
import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

AREAS = ('core_cases', 'combinator_cases', 'attention_cases', 'lsh_cases', 'reversible_cases',
         'sparse_cases', 'sru_cases', 'chunking_cases')


@dataclasses.dataclass
class Case:
    """A tiny instance of one public layer.

    name: the public name in `tl.__all__` that this case covers.
    make: mode -> layer ('train' | 'eval' | 'predict'); layers without a mode ignore it.
    inputs: () -> concrete NumPy inputs (an array, or a tuple for n_in > 1).
    grad_check: run the finite-difference check on JAX float64 (layers with weights).
    predict_ok: the layer can be built in predict mode with these inputs.
    atol: tolerance of the NumPy == JAX and jit == no-jit comparisons.
    id: test id (defaults to name; use it when one name has several cases).
    """
    name: str
    make: Callable[[str], Any]
    inputs: Callable[[], Any]
    grad_check: bool = True
    predict_ok: bool = True
    atol: float = 1e-5
    id: str | None = None

    def __post_init__(self):
        self.id = self.id or self.name


def floats(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def ints(*shape: int, high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(np.int32)


def all_cases() -> list[Case]:
    cases = []
    for area in AREAS:
        try:
            module = importlib.import_module(f'tests.layers.cases.{area}')
        except ModuleNotFoundError as e:
            if e.name != f'tests.layers.cases.{area}':
                raise
            continue
        cases.extend(module.CASES)
    return cases
