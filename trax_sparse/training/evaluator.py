"""The Loop's evaluations: one feed and one jit'd eval step per EvalTask.

Each evaluation of a resumable stream restarts from the same position, so every eval sees
the same batches; metric values are averaged weighted by the sum of each batch's weights.
A CrossEntropyLoss 'loss' also gives 'log_perplexity'.

Example:
    >>> from trax_sparse.training.tasks import EvalTask
    >>> ev = Evaluator([EvalTask(iter([]), n_eval_batches=1)], restored_positions=None)
    >>> ev.names
    ['eval']
"""
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse import layers as tl
from trax_sparse.training.tasks import BatchFeed, EvalTask


class Evaluator:
    """Feeds (positioned for resume) and, after `build`, the eval steps of the eval tasks."""

    def __init__(self, tasks: Sequence[EvalTask], restored_positions: dict | None,
                 stream_states: bool = True):
        self.tasks = list(tasks)
        self.feeds = [BatchFeed(t.labeled_data, f'EvalTask({t.name}).labeled_data')
                      for t in self.tasks]
        if restored_positions is not None:
            for task, feed in zip(self.tasks, self.feeds):
                feed.restore(restored_positions.get(task.name, {'batches': 0}), stream_states)
        # Evals of resumable streams start from here each time (same batches every eval).
        self.starts = [feed.position() for feed in self.feeds]
        self._steps: list[Callable] = []

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def first_batches(self) -> list[tuple]:
        return [feed.peek() for feed in self.feeds]

    def build(self, steps: Sequence[Callable]) -> None:
        """Sets the (jit'd) eval step of each task."""
        self._steps = list(steps)

    def positions(self) -> dict:
        """{task name: the data position to store in a checkpoint}."""
        return {t.name: start if f.resumable else f.position()
                for t, f, start in zip(self.tasks, self.feeds, self.starts)}

    def evaluate(self, index: int, run_step: Callable[[Callable, tuple, int], Any],
                 check: Callable[[tuple, str], None], step: int) -> dict:
        """The record of task `index`; run_step(eval_step, batch, batch_index) -> host
        (values, weight); check(batch, where) validates a batch first."""
        task, feed = self.tasks[index], self.feeds[index]
        if feed.resumable:
            feed.restore(self.starts[index])
        sums, total = np.zeros(len(task.metrics)), 0.0
        for b in range(task.n_eval_batches):
            batch = feed.next()
            check(batch, f"EvalTask '{task.name}', batch {b + 1}")
            values, weight = run_step(self._steps[index], batch, b)
            sums += np.asarray([float(v) for v in values]) * float(weight)
            total += float(weight)
        record = {'step': step, 'split': task.name}
        for name, value in zip(task.metric_names, sums):
            record[name] = float(value) / max(total, 1e-9)
        if 'loss' in record and isinstance(task.metrics[task.metric_names.index('loss')],
                                           tl.CrossEntropyLoss):
            record['log_perplexity'] = record['loss']
        return record


__all__ = ['Evaluator']
