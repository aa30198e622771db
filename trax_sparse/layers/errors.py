"""Layer errors and argument checks: `LayerError` names the failing layer's path, the
shapes it received and the file:line where it was created.

Example:
    >>> check_rate('Dropout', 'rate', 0.1)
    0.1
"""
import os
import sys
from typing import Any, Sequence

from trax_sparse import shapes

MODES = ('train', 'eval', 'predict')
_LAYERS_DIR = os.path.dirname(os.path.abspath(__file__))


def creation_site() -> str:
    """file:line of the code that built the layer: the first frame outside trax_sparse/layers."""
    frame = sys._getframe(2)
    while frame is not None and os.path.dirname(
            os.path.abspath(frame.f_code.co_filename)) == _LAYERS_DIR:
        frame = frame.f_back
    if frame is None:
        return '?'
    return f'{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}'


def check_mode(mode: str, layer_name: str) -> str:
    """Returns `mode` if it is one of MODES; else raises a ValueError naming the layer."""
    if mode not in MODES:
        raise ValueError(f'{layer_name}: mode must be one of {MODES}, got {mode!r}')
    return mode


def check_rate(layer_name: str, what: str, value: float) -> float:
    """Returns `value` as a float if it is a probability in [0, 1) (a dropout rate, ...)."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f'{layer_name}: {what} must be in [0, 1), got {value}')
    return float(value)


def check_positive_int(layer_name: str, what: str, value: Any) -> int:
    """Returns `value` as an int if it is a positive integer (a width, a count, ...)."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f'{layer_name}: {what} must be a positive integer, got {value!r}')
    return int(value)


def check_mask_shape(layer_name: str, mask: Any, expected: Sequence[int], what: str = 'mask',
                     axes: str = '[batch, length]') -> Any:
    """Returns `mask` if its shape is `expected` (the `axes` named); else a ValueError naming
    the layer, e.g. `SRU_4: the mask must have shape [batch, length] = (2, 5), got (2, 4)`."""
    if tuple(mask.shape) != tuple(expected):
        raise ValueError(f'{layer_name}: the {what} must have shape {axes} = {tuple(expected)}, '
                         f'got {tuple(mask.shape)}')
    return mask


class LayerError(Exception):
    """An error inside a layer; names the layer's path (e.g. `Serial[2]/Branch[0]/Dense_16`)
    and the file:line where the failing layer was created."""

    def __init__(self, layer_path: str, message: str, inputs: str | None = None,
                 created_at: str | None = None):
        self.layer_path = layer_path
        self.message = message
        self.inputs = inputs
        self.created_at = created_at
        super().__init__(self._text())

    def _text(self) -> str:
        got = f' [received inputs {self.inputs}]' if self.inputs else ''
        site = f' (layer created at {self.created_at})' if self.created_at else ''
        return f'in layer {self.layer_path}: {self.message}{got}{site}'

    def add_parent(self, segment: str) -> None:
        self.layer_path = f'{segment}/{self.layer_path}'
        self.args = (self._text(),)

    def __str__(self) -> str:
        return self._text()


class _ExitContext:
    """A plain class, not contextlib: entered on every layer call, so it must cost ~nothing.

    `about` is what the error will name besides the layer (its inputs, or the
    sublayer's index); subclasses define `__exit__`.
    """
    __slots__ = ('layer', 'about')

    def __init__(self, layer: Any, about: Any):
        self.layer, self.about = layer, about

    def __enter__(self) -> None:
        return None


class ErrorContext(_ExitContext):
    """Turns an exception inside into a LayerError naming the layer and its inputs (`about`)."""
    __slots__ = ()

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or isinstance(error, LayerError) or not isinstance(error, Exception):
            return False
        layer = self.layer
        raise LayerError(layer.name, f'{kind.__name__}: {error}', shapes.describe(self.about),
                         layer.created_at) from error


class SublayerContext(_ExitContext):
    """Prefixes `Name[index]/` (index: `about`) to the path of a LayerError raised inside."""
    __slots__ = ()

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, LayerError):
            error.add_parent(f'{self.layer.name}[{self.about}]')
        return False


__all__ = ['MODES', 'ErrorContext', 'LayerError', 'SublayerContext', 'check_mask_shape',
           'check_mode', 'check_positive_int', 'check_rate', 'creation_site']
