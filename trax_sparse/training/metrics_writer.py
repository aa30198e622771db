"""Metric records to a JSON-lines file, TensorBoard event files, the log and a progress bar.

A record is a flat dict: {'step': 100, 'split': 'train', 'loss': 2.3, ...}. Records go
to `output_dir/metrics.jsonl` (one JSON object per line) and, when tensorboardX is
installed, to TensorBoard event files in `output_dir/<split>/` (tag 'metrics/<name>').
On resume from step N, records of steps > N (written after that checkpoint by the run
that stopped) are dropped from metrics.jsonl and purged from TensorBoard, because the
resumed run writes them again.

metrics.jsonl is strict JSON: a NaN or infinite value is written as the string "NaN",
"Infinity" or "-Infinity" (float() reads them; so does `read_metrics`, which turns them
back into floats), never as a bare NaN token that JSON parsers reject.

Example:
    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> writer = MetricsWriter(d, tensorboard=False)
    >>> writer.write({'step': 1, 'split': 'train', 'loss': 2.5})
    >>> writer.write({'step': 2, 'split': 'train', 'loss': float('nan')})
    >>> writer.close()
    >>> [json.loads(line)['loss'] for line in open(os.path.join(d, 'metrics.jsonl'))]
    [2.5, 'NaN']
"""
import json
import logging
import math
import os
import sys
import warnings
from typing import Any

from trax_sparse.io_utils import atomic_write_text

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_SPLITS = ('train', 'eval')  # event file folders besides one per eval task name
log = logging.getLogger('trax_sparse.training')
_NON_FINITE = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}


def to_json_line(record: dict) -> str:
    """The record as one line of strict JSON (non-finite floats as strings)."""
    def strict(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return 'NaN' if math.isnan(v) else ('Infinity' if v > 0 else '-Infinity')
        return v
    return json.dumps({k: strict(v) for k, v in record.items()}, allow_nan=False) + '\n'


def _from_json(record: dict) -> dict:
    return {k: _NON_FINITE.get(v, v) if isinstance(v, str) and k != 'split' else v
            for k, v in record.items()}


def read_metrics(output_dir: str) -> list[dict]:
    """All records of `output_dir/metrics.jsonl` (complete lines only)."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                records.append(_from_json(json.loads(line)))
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
    return records


def _format(record: dict) -> str:
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f'{k} {v}'
             for k, v in record.items() if k not in ('step', 'split')]
    return f"step {record.get('step')} {record.get('split', '')}: " + ', '.join(parts)


class MetricsWriter:
    """Appends records to metrics.jsonl and TensorBoard; logs them (INFO)."""

    def __init__(self, output_dir: str | None, resume_step: int = 0, tensorboard: bool = True):
        self._output_dir = output_dir
        self._writers: dict = {}
        self._tensorboard = tensorboard and output_dir is not None
        self._purge_step = resume_step + 1 if resume_step > 0 else None
        self._file = None
        if output_dir is not None:
            path = os.path.join(output_dir, METRICS_FILE)
            if os.path.exists(path):
                kept = [r for r in read_metrics(output_dir) if r.get('step', 0) <= resume_step]
                atomic_write_text(path, ''.join(to_json_line(r) for r in kept))
            self._file = open(path, 'a', encoding='utf-8')

    def write(self, record: dict) -> None:
        log.info(_format(record))
        if self._file is not None:
            self._file.write(to_json_line(record))
            self._file.flush()
        if self._tensorboard:
            writer = self._tensorboard_writer(str(record.get('split', 'train')))
            if writer is not None:
                for name, value in record.items():
                    if name not in ('step', 'split') and isinstance(value, (int, float)) \
                            and math.isfinite(value):
                        writer.add_scalar(f'metrics/{name}', value, record['step'])
                writer.flush()

    def _tensorboard_writer(self, split: str) -> Any:
        if split not in self._writers:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                warnings.warn('tensorboardX is not installed: no TensorBoard event files '
                              '(pip install tensorboardX)', RuntimeWarning, stacklevel=3)
                self._tensorboard = False
                return None
            self._writers[split] = SummaryWriter(os.path.join(self._output_dir, split),
                                                 purge_step=self._purge_step)
        return self._writers[split]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        if self._file is not None:
            self._file.close()
            self._file = None


class ProgressBar:
    """A tqdm bar on an interactive terminal; silent otherwise (logs carry the metrics)."""

    def __init__(self, total: int, description: str = 'train', enabled: bool | None = None,
                 initial: int = 0):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, initial=initial, desc=description, unit='step',
                                 dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, loss_text: str | None = None) -> None:
        """Advances one step; `loss_text` ('loss (mean of last 100) 2.3456') goes after it."""
        if self._bar is not None:
            if loss_text is not None:
                self._bar.set_postfix_str(loss_text, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


__all__ = ['METRICS_FILE', 'MetricsWriter', 'ProgressBar', 'TENSORBOARD_SPLITS',
           'read_metrics', 'to_json_line']
