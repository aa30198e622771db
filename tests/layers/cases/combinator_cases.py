"""Registry cases for the combinators (each wraps small weighted layers)."""
from trax_sparse import layers as tl
from tests.layers.cases import Case, floats


def _scan_cell():
    # (x_t [B, d], carry [B, d]) -> (y_t, new carry): a tiny weighted recurrence.
    return tl.Serial(tl.Parallel(tl.Dense(3), None), tl.Add(), tl.Fn('Tanh', lambda h: h * 0.5),
                     tl.Dup())


CASES = [
    Case('Serial', lambda mode: tl.Serial(tl.Dense(4), tl.Relu(), tl.Dense(2)),
         lambda: floats(2, 3)),
    Case('Parallel', lambda mode: tl.Parallel(tl.Dense(4), None, tl.Dense(2)),
         lambda: (floats(2, 3), floats(2, 2, seed=1), floats(2, 5, seed=2))),
    Case('Branch', lambda mode: tl.Branch(tl.Dense(4), None, tl.Serial(tl.Add(), tl.Dense(2))),
         lambda: (floats(2, 3), floats(2, 3, seed=1))),
    Case('Select', lambda mode: tl.Select([1, 0, 1]), lambda: (floats(2, 3), floats(2, 1, seed=1)),
         grad_check=False),
    Case('Dup', lambda mode: tl.Dup(), lambda: floats(2, 3), grad_check=False),
    Case('Swap', lambda mode: tl.Swap(), lambda: (floats(2, 3), floats(2, 1, seed=1)),
         grad_check=False),
    Case('Drop', lambda mode: tl.Drop(), lambda: (floats(2, 3), floats(2, 1, seed=1)),
         grad_check=False),
    Case('Residual', lambda mode: tl.Residual(tl.LayerNorm(), tl.Dense(3)), lambda: floats(2, 3)),
    Case('Fn', lambda mode: tl.Fn('Mul', lambda a, b: a * b),
         lambda: (floats(2, 3), floats(2, 3, seed=1))),
    Case('Scan', lambda mode: tl.Scan(_scan_cell(), axis=1, mode=mode),
         lambda: (floats(2, 4, 3), floats(2, 3, seed=1))),
    Case('Scan', lambda mode: tl.Scan(_scan_cell(), axis=1, remat=True, mode=mode),
         lambda: (floats(2, 4, 3), floats(2, 3, seed=1)), id='Scan_remat'),
    Case('Chunk', lambda mode: tl.Chunk(tl.Serial(tl.Dense(4), tl.Relu(), tl.Dense(2)), 2),
         lambda: floats(6, 3)),
    Case('Cache', lambda mode: tl.Cache(tl.Dense(4)), lambda: floats(2, 3)),
]
