"""The Loop's metrics reporter: train averages, speed without compile time, log lines, ETA.

`Reporter` receives each finished step's host metrics (`step_done`), turns the steps since
the last record into a train record (`train_record`: means, learning rate, tokens/s and
steps/s), writes records through MetricsWriter (metrics.jsonl, TensorBoard, the log),
logs a line with an ETA every `log_every` steps and drives the progress bar, which starts
at the resumed step. Both show the same labelled loss: the mean of the last `log_every`
(default 100) steps, 'loss (mean of last 100) 2.3456'. Speeds count only time spent in
train steps: the first step of a Loop (it compiles) and the time between `pause()` and
`resume()` (evals, checkpoints) are left out; a record without any timed step has no speed
entries.

Example:
    >>> r = Reporter(None, log_every=None, progress_bar=False)
    >>> r.start_run(0, 2)
    >>> r.step_done(1, {'loss': 2.0}, 8); r.step_done(2, {'loss': 1.0}, 8)
    >>> rec = r.train_record(2, learning_rate=0.1)
    >>> (rec['loss'], rec['learning_rate'], 'tokens_per_second' in rec)
    (1.5, 0.1, True)
"""
import collections
import logging
import math
import time

import numpy as np

from trax_sparse.training.metrics_writer import MetricsWriter, ProgressBar

log = logging.getLogger('trax_sparse.training')
TIMING_METRICS = ('tokens_per_second', 'steps_per_second')
DEFAULT_LOSS_WINDOW = 100  # steps in the progress bar's loss without log_every
_FIRST = ('loss', 'accuracy', 'log_perplexity')  # the order of metrics in train records


def format_duration(seconds: float) -> str:
    """'1h02m', '3m05s', '42s'; from 2 days '3d04h'; over 100 years '> 100 years'.

        >>> format_duration(125), format_duration(3 * 86400 + 4 * 3600), format_duration(1e30)
        ('2m05s', '3d04h', '> 100 years')
    """
    if not seconds < 100 * 365 * 86400:   # inf and NaN too
        return '> 100 years'
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f'{hours // 24}d{hours % 24:02d}h'
    if hours:
        return f'{hours}h{minutes:02d}m'
    return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class _Speed:
    """Tokens and steps over active time; the first step seen only starts the clock."""

    def __init__(self):
        self.tokens = self.steps = 0
        self.active = 0.0
        self._since: float | None = None
        self._started = False   # the first (compiling) step has finished
        self._running = False

    def resume(self) -> None:
        self._running = True
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._running and self._since is not None and self._started:
            self.active += time.perf_counter() - self._since
        self._running = False

    def step(self, n_tokens: int) -> None:
        if not self._started:       # compile time: start counting after this step
            self._started, self._since = True, time.perf_counter()
            return
        self.tokens += n_tokens
        self.steps += 1

    def elapsed(self) -> float:
        running = time.perf_counter() - self._since if self._running and self._started else 0
        return self.active + running

    def reset(self) -> None:
        self.tokens = self.steps = 0
        self.active = 0.0
        if self._running:
            self._since = time.perf_counter()


class Reporter:
    """Train averages, speeds, log lines, progress bar; writes records (see module doc)."""

    def __init__(self, output_dir: str | None, resume_step: int = 0,
                 log_every: int | None = None, progress_bar: bool | None = None):
        if log_every is not None and int(log_every) < 1:
            raise ValueError(f'log_every must be >= 1 (or None for no log lines), got '
                             f'{log_every}')
        self.history: list[dict] = []
        self._writer = MetricsWriter(output_dir, resume_step=resume_step)
        self._log_every, self._progress_bar = log_every, progress_bar
        self._accumulated: list[dict] = []
        self._recent = collections.deque(maxlen=int(log_every or DEFAULT_LOSS_WINDOW))
        self._interval, self._run = _Speed(), _Speed()
        self._bar: ProgressBar | None = None
        self._target = 0

    def start_run(self, start_step: int, target_step: int) -> None:
        """A run() from start_step to target_step begins: bar, ETA and clocks."""
        self._target = target_step
        self._bar = ProgressBar(target_step, enabled=self._progress_bar, initial=start_step)
        self.resume()

    def end_run(self) -> None:
        self.pause()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def pause(self) -> None:
        """Stops the speed clocks (evals and checkpoints are not train time)."""
        self._interval.pause()
        self._run.pause()

    def resume(self) -> None:
        self._interval.resume()
        self._run.resume()

    def step_done(self, step: int, values: dict, n_tokens: int) -> None:
        """Records a finished step's metrics (host floats)."""
        self._accumulated.append(values)
        self._interval.step(n_tokens)
        self._run.step(n_tokens)
        self._recent.append(values['loss'])
        if self._bar is not None:
            self._bar.update(self.loss_text())
        if self._log_every and step % self._log_every == 0:
            self._log_line(step)

    def _log_line(self, step: int) -> None:
        parts = [f'step {step}/{self._target}', self.loss_text()]
        elapsed = self._run.elapsed()
        if self._run.steps and elapsed > 0:
            steps_per_second = self._run.steps / elapsed
            parts += [f'{self._run.tokens / elapsed:.0f} tokens/s',
                      f'{steps_per_second:.2f} steps/s',
                      f'ETA {format_duration((self._target - step) / steps_per_second)}']
        log.info(', '.join(parts))

    def loss_text(self) -> str:
        """'loss (mean of last 100) 2.3456': what the progress bar and the log line show."""
        if not self._recent:
            return 'loss (no step yet)'
        return f'loss (mean of last {len(self._recent)}) {float(np.mean(self._recent)):.4f}'

    def train_record(self, step: int, learning_rate: float) -> dict | None:
        """The record of the steps since the last one (None if there were none); written."""
        if not self._accumulated:
            return None
        record = {'step': step, 'split': 'train'}
        measured = self._accumulated[0]
        names = [n for n in _FIRST if n in measured] + sorted(set(measured) - set(_FIRST))
        for name in names:
            record[name] = float(np.mean([v[name] for v in self._accumulated]))
        record['learning_rate'] = learning_rate
        elapsed = self._interval.elapsed()
        if self._interval.steps and elapsed > 0:
            record['tokens_per_second'] = self._interval.tokens / elapsed
            record['steps_per_second'] = self._interval.steps / elapsed
        self._accumulated = []
        self._interval.reset()
        self.write(record)
        return record

    def write(self, record: dict) -> None:
        """Appends to history and writes to metrics.jsonl, TensorBoard and the log."""
        self.history.append(record)
        self._writer.write(record)

    def close(self) -> None:
        self.end_run()
        self._writer.close()


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss or the gradient became NaN or infinite."""


def is_finite_step(values: dict) -> bool:
    return math.isfinite(values['loss']) and math.isfinite(values['grad_norm'])


def non_finite_error(step: int, values: dict, last_saved_step: int,
                     last_checkpoint: str | None) -> NonFiniteLossError:
    """The error that stops training at `step`, naming what is saved and what to try."""
    kept = f'the last good checkpoint is {last_checkpoint}' if last_checkpoint else \
        'no checkpoint was written'
    return NonFiniteLossError(
        f"training stopped at step {step}: non-finite loss {values['loss']} "
        f"(gradient norm {values['grad_norm']}); nothing after step "
        f'{max(last_saved_step, 0)} is saved; {kept}. Lower the learning rate, clip '
        f'gradients (clip_gradient_norm) or check the data.')


__all__ = ['NonFiniteLossError', 'Reporter', 'TIMING_METRICS', 'format_duration',
           'is_finite_step', 'non_finite_error']
