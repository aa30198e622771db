"""TrainTask, EvalTask and BatchFeed: what to train on and how, what to measure.

Labeled data is any iterator (or a zero-argument callable returning one) of batches
`(inputs, targets, weights)` of arrays; `(inputs, targets)` gets weights of ones.
The model takes the first `model.n_in` items; its outputs and the remaining items
form the stack the loss and metric layers read (for an LM: logits, targets, weights).
A stream with `state() -> dict` (JSON-serializable) and `restore(dict)` is resumable:
checkpoints store its position. Other streams are fast-forwarded on resume by drawing
and dropping the batches already used.

Example:
    >>> import numpy as np
    >>> batches = iter([(np.zeros((2, 4), np.int32), np.zeros((2, 4), np.int32))] * 3)
    >>> task = TrainTask(batches, n_steps_per_checkpoint=10)
    >>> (task.loss_layer.name, task.optimizer.name)
    ('CrossEntropyLoss', 'Adam')
"""
import logging
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from trax_sparse import layers as tl
from trax_sparse.training import optimizers as opt
from trax_sparse.training import schedules

log = logging.getLogger('trax_sparse.training')


def _check_layer(layer: Any, what: str) -> tl.Layer:
    if not isinstance(layer, tl.Layer):
        raise ValueError(f'{what} must be a Layer, got {type(layer).__name__}')
    return layer


class TrainTask:
    """A training objective: labeled data, a loss layer, an optimizer and its schedule.

    loss_layer defaults to CrossEntropyLoss (its weights, if any, are not trained);
    optimizer to Adam(); lr_schedule (step -> learning rate, step >= 1) to a constant
    0.001. Checkpoints are saved every n_steps_per_checkpoint steps.
    """

    def __init__(self, labeled_data: Iterable | Callable, loss_layer: tl.Layer | None = None,
                 optimizer: opt.Optimizer | None = None, lr_schedule: Callable | None = None,
                 n_steps_per_checkpoint: int = 100, name: str = 'train'):
        self.labeled_data = labeled_data
        self.loss_layer = _check_layer(loss_layer or tl.CrossEntropyLoss(), 'TrainTask.loss_layer')
        self.optimizer = optimizer if optimizer is not None else opt.Adam()
        if not isinstance(self.optimizer, opt.Optimizer):
            raise ValueError(f'TrainTask.optimizer must be an Optimizer (e.g. Adam()), got '
                             f'{type(self.optimizer).__name__}')
        self.lr_schedule = lr_schedule if lr_schedule is not None else schedules.constant(0.001)
        if not callable(self.lr_schedule):
            raise ValueError(f'TrainTask.lr_schedule must be a function step -> learning rate, '
                             f'got {type(self.lr_schedule).__name__}')
        if int(n_steps_per_checkpoint) < 1:
            raise ValueError(f'TrainTask.n_steps_per_checkpoint must be >= 1, got '
                             f'{n_steps_per_checkpoint}')
        self.n_steps_per_checkpoint = int(n_steps_per_checkpoint)
        self.name = name


def _metric_name(layer: tl.Layer) -> str:
    if isinstance(layer, tl.CrossEntropyLoss):
        return 'loss'
    return re.sub(r'(?<!^)(?=[A-Z])', '_', layer.name).lower()


class EvalTask:
    """Evaluation: metric layers (default: loss and accuracy) averaged over n_eval_batches.

    Averages are weighted by the sum of each batch's weights (the third stack item).
    """

    def __init__(self, labeled_data: Iterable | Callable, metrics: Sequence[tl.Layer] | None = None,
                 metric_names: Sequence[str] | None = None, n_eval_batches: int = 1,
                 name: str = 'eval'):
        self.labeled_data = labeled_data
        if metrics is None:
            metrics = [tl.CrossEntropyLoss(), tl.Accuracy()]
        self.metrics = [_check_layer(m, 'EvalTask.metrics item') for m in metrics]
        if not self.metrics:
            raise ValueError('EvalTask.metrics must name at least one metric layer')
        names = list(metric_names) if metric_names is not None else \
            [_metric_name(m) for m in self.metrics]
        if len(names) != len(self.metrics) or len(set(names)) != len(names):
            raise ValueError(f'EvalTask.metric_names must be {len(self.metrics)} distinct names, '
                             f'got {names}')
        self.metric_names = names
        if int(n_eval_batches) < 1:
            raise ValueError(f'EvalTask.n_eval_batches must be >= 1, got {n_eval_batches}')
        self.n_eval_batches = int(n_eval_batches)
        self.name = name


def check_tasks(tasks: Any, eval_tasks: Any) -> tuple[TrainTask, list[EvalTask]]:
    """(the one TrainTask, the list of EvalTasks with distinct names) or a ValueError."""
    tasks = [tasks] if isinstance(tasks, TrainTask) else list(tasks)
    if len(tasks) != 1 or not isinstance(tasks[0], TrainTask):
        raise ValueError(f'Loop trains exactly one TrainTask, got {len(tasks)} tasks')
    eval_tasks = [eval_tasks] if isinstance(eval_tasks, EvalTask) else list(eval_tasks or [])
    names = [t.name for t in eval_tasks]
    if len(set(names)) != len(names) or 'train' in names:
        raise ValueError(f"eval task names must be distinct and not 'train', got {names}")
    return tasks[0], eval_tasks


def is_stream_factory(data: Any) -> bool:
    """A class, or a callable that is not itself an iterator or iterable (a function)."""
    return isinstance(data, type) or (callable(data) and not hasattr(data, '__next__')
                                      and not hasattr(data, '__iter__'))


def open_stream(data: Any) -> Any:
    """`data`, or what it returns when it is a stream factory (a class or a function)."""
    return data() if is_stream_factory(data) else data


class BatchFeed:
    """Draws batches from a stream; knows the position to checkpoint and how to restore it."""

    def __init__(self, data: Iterable | Callable, what: str):
        data = open_stream(data)
        self._what = what
        self._source = data
        self._iterator = self._make_iterator()
        self._pending: tuple[Any, tuple] | None = None
        self.consumed = 0

    @property
    def resumable(self) -> bool:
        """True when the stream has state() and restore()."""
        return callable(getattr(self._source, 'state', None)) and \
            callable(getattr(self._source, 'restore', None))

    def _make_iterator(self):
        if hasattr(self._source, '__next__'):
            return self._source
        try:
            return iter(self._source)
        except TypeError as e:
            raise ValueError(f'{self._what} must be an iterator or iterable of batches (or a '
                             f'function returning one), got {type(self._source).__name__}') from e

    def _stream_state(self) -> Any:
        return self._source.state() if self.resumable else None

    def _draw(self) -> tuple:
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise ValueError(f'{self._what} ran out of batches after {self.consumed}; '
                             f'training needs an endless stream (repeat the data)') from None
        return self._normalize(batch)

    def _normalize(self, batch: Any) -> tuple:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f'{self._what} must yield tuples (inputs, targets[, weights]) of '
                             f'arrays, got {type(batch).__name__}'
                             f'{f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""}')
        items = [x if hasattr(x, 'shape') and hasattr(x, 'dtype') else np.asarray(x)
                 for x in batch]
        if len(items) == 2:
            items.append(np.ones(items[1].shape, np.float32))
        return tuple(items)

    def peek(self) -> tuple:
        """The next batch, without consuming it."""
        if self._pending is None:
            position = self.position()
            self._pending = (position, self._draw())
        return self._pending[1]

    def next(self) -> tuple:
        """The next batch (consumed)."""
        if self._pending is not None:
            batch, self._pending = self._pending[1], None
        else:
            batch = self._draw()
        self.consumed += 1
        return batch

    def position(self) -> dict:
        """{'batches': n consumed, 'stream': the stream's state() before the next batch}."""
        if self._pending is not None:
            return self._pending[0]
        return {'batches': self.consumed, 'stream': self._stream_state()}

    def restore(self, position: dict, stream_state: bool = True) -> None:
        """Continues after the batches counted in `position` (restore() or fast-forward).

        stream_state=False ignores the stream's saved state and fast-forwards (the state is
        another process's: checkpoints of a multi-host run hold process 0's).
        """
        target = int(position.get('batches', 0))
        if self.resumable and stream_state and position.get('stream') is not None:
            self._pending = None
            self._source.restore(position['stream'])
            self._iterator = self._make_iterator()
            self.consumed = target
            return
        if self._pending is not None:
            raise ValueError(f'{self._what}: a stream without state()/restore() can only be '
                             f'fast-forwarded before its first batch is drawn')
        if target > self.consumed:
            log.info('%s has no state()/restore(): fast-forwarding it by %d batches',
                     self._what, target - self.consumed)
        while self.consumed < target:
            self._draw()
            self.consumed += 1


__all__ = ['BatchFeed', 'EvalTask', 'TrainTask', 'check_tasks', 'is_stream_factory',
           'open_stream']
