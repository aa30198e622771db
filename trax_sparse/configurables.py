"""Gin registration of the library: layers, data, optimizers, schedules and the `train` root.

The only library module that imports gin (with trainer.py and decode.py). Everything is
registered with `gin.register`, which leaves the Python objects unchanged, so bindings
apply only where a gin file references a configurable (`@Dense`, `@Adafactor()`).
`mode` is never configurable: the trainer builds the train and eval models itself.
Gin has a `constant` of its own, so write the constant schedule as `@training.constant`
(bindings: `training.constant.value = 0.001`).

Example:
    >>> import gin
    >>> from trax_sparse import configurables
    >>> with gin.unlock_config():
    ...     _ = gin.parse_config('Adafactor.decay_rate = 0.9')
    >>> gin.get_configurable('Adafactor')().hyper_parameters['decay_rate']
    0.9
    >>> gin.clear_config()
"""
import inspect
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import gin

from trax_sparse import data, models, training
from trax_sparse import layers as tl

# Public names of trax_sparse.layers that are API, not layers to configure (the one list:
# tests/layers/test_contracts.py reads it too).
LAYER_API = frozenset({'MODES', 'Layer', 'LayerError', 'PredictUse', 'PureLayer',
                       'check_mode', 'count_params', 'is_empty_call', 'is_replaying',
                       'note_predict_use', 'recording_predict_use', 'replay_context',
                       'weights_signature'})
# The part factories of trax_sparse.models.parts: `Terraformer.ff = @feed_forward()`.
PART_FACTORIES = ('attention', 'feed_forward', 'feed_forward_with_sru', 'output_layer')
GIN_MARKER = 'shakespeare_lm.gin'     # a config every copy of the gin configs holds


def find_gin_dir(package_dir: str | os.PathLike | None = None) -> str:
    """The folder of the library's gin configs: `include 'x.gin'` finds them from anywhere.

    An installed wheel holds them as the package data `trax_sparse/gin_configs/`; a checkout
    (or an editable install) at the repository's top-level `gin/`. A folder counts only if it
    holds GIN_MARKER, so site-packages/gin (gin-config itself) is never taken for it.

        >>> sorted(os.listdir(find_gin_dir()))[:1]
        ['c4_scaling_transformer_baseline.gin']
    """
    package = Path(package_dir or Path(__file__).resolve().parent)
    candidates = (package / 'gin_configs', package.parent / 'gin')
    for candidate in candidates:
        if (candidate / GIN_MARKER).is_file():
            return str(candidate)
    raise FileNotFoundError(f'the gin configs of trax_sparse are missing: none of '
                            f'{[str(c) for c in candidates]} holds {GIN_MARKER} (reinstall the '
                            f'package)')


GIN_DIR = find_gin_dir()
OPTIMIZERS = ('Adafactor', 'Adam', 'SGD')
SCHEDULES = ('constant', 'multifactor', 'warmup', 'warmup_and_rsqrt_decay')


def register(fn: Any, module: str) -> Any:
    """Registers a function or class with gin under `module`, with `mode` denylisted."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        parameters = {}
    denylist = ['mode'] if 'mode' in parameters else None
    return gin.register(fn, module=module, denylist=denylist)


def register_public(namespace: ModuleType, module: str, exclude: frozenset = frozenset(),
                    names: Any = None) -> list[str]:
    """Registers the public functions and classes of `namespace` (its __all__ or `names`)."""
    registered = []
    for name in (names if names is not None else namespace.__all__):
        obj = getattr(namespace, name)
        if name in exclude or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        register(obj, module)
        registered.append(name)
    return registered


class _QuietIncludeSearch(logging.Filter):
    """Hides gin's 'Path not found' errors for the search-path candidates it tries first."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('Path not found')


def add_search_paths(config_files: Any = ()) -> None:
    """Lets gin `include` (and --config_file) find files beside the given configs and in GIN_DIR."""
    for directory in [os.path.dirname(os.path.abspath(f)) for f in config_files] + [GIN_DIR]:
        if os.path.isdir(directory):
            gin.add_config_file_search_path(directory)
    root = logging.getLogger()
    if not any(isinstance(f, _QuietIncludeSearch) for f in root.filters):
        root.addFilter(_QuietIncludeSearch())


LAYERS = register_public(tl, 'trax_sparse.layers', exclude=LAYER_API)
MODELS = register_public(models, 'trax_sparse.models')
PARTS = register_public(models.parts, 'trax_sparse.models.parts', names=PART_FACTORIES)
DATA = register_public(data, 'trax_sparse.data')
register_public(training, 'trax_sparse.training', names=OPTIMIZERS + SCHEDULES)
train = gin.external_configurable(training.train, module='trax_sparse.training',
                                  denylist=['output_dir', 'operative_config'])

__all__ = ['DATA', 'GIN_DIR', 'GIN_MARKER', 'LAYERS', 'LAYER_API', 'MODELS', 'OPTIMIZERS',
           'PARTS', 'PART_FACTORIES', 'SCHEDULES', 'add_search_paths', 'find_gin_dir', 'register', 'register_public', 'train']
