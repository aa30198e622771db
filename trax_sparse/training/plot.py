"""A PNG of the loss curves of a training run: the `trax-sparse-plot DIR` command.

Reads DIR/metrics.jsonl and draws one loss curve per split (train, eval, ...) against the
step with matplotlib's Agg backend (no display needed); writes DIR/loss.png unless
--output says otherwise. The trainer writes the same plot at the end of training when
matplotlib is installed (`pip install 'trax_sparse[train]'`).

Example:
    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
    ...     for step, loss in [(1, 3.0), (2, 2.0)]:
    ...         _ = f.write(json.dumps({'step': step, 'split': 'train', 'loss': loss}) + '\\n')
    >>> os.path.basename(plot_metrics(d))
    'loss.png'
"""
import argparse
import logging
import math
import os
import sys

from trax_sparse.training.metrics_writer import METRICS_FILE, read_metrics

PLOT_FILE = 'loss.png'
log = logging.getLogger('trax_sparse.training')


def _curves(records: list[dict], metric: str) -> dict[str, tuple[list, list]]:
    curves: dict[str, tuple[list, list]] = {}
    for r in records:
        value = r.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps, values = curves.setdefault(str(r.get('split', 'train')), ([], []))
            steps.append(r['step'])
            values.append(value)
    return curves


def plot_metrics(output_dir: str, path: str | None = None, metric: str = 'loss') -> str:
    """Writes the PNG of `metric` per split; returns its path.

    Raises FileNotFoundError / ValueError (naming the file) when there is nothing to plot,
    ImportError when matplotlib is missing.
    """
    metrics_path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f'{metrics_path} does not exist; expected the output_dir of '
                                f'a training run')
    curves = _curves(read_metrics(output_dir), metric)
    if not curves:
        raise ValueError(f'{metrics_path} has no finite {metric!r} values to plot')
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'trax_sparse[train]'") from e
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for split, (steps, values) in sorted(curves.items()):
        axes.plot(steps, values, marker='o' if len(steps) < 30 else None, label=split)
    axes.set_xlabel('step')
    axes.set_ylabel(metric)
    axes.set_title(os.path.basename(os.path.abspath(output_dir)))
    axes.grid(alpha=0.3)
    axes.legend()
    path = path or os.path.join(output_dir, PLOT_FILE)
    figure.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(figure)
    return path


def plot_if_possible(output_dir: str) -> str | None:
    """plot_metrics, logging instead of raising (used at the end of training)."""
    try:
        path = plot_metrics(output_dir)
    except ImportError:
        log.info('matplotlib is not installed: no %s (pip install matplotlib)', PLOT_FILE)
        return None
    except (OSError, ValueError) as e:
        log.warning('no loss plot: %s', e)
        return None
    log.info('loss curves: %s', path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`trax-sparse-plot DIR [--output FILE] [--metric NAME]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog='trax-sparse-plot', description=__doc__.split('\n')[0])
    parser.add_argument('output_dir', help='a training output_dir (holds metrics.jsonl)')
    parser.add_argument('--output', default=None, help=f'PNG path (default DIR/{PLOT_FILE})')
    parser.add_argument('--metric', default='loss', help='the metric to plot (default loss)')
    args = parser.parse_args(argv)
    try:
        path = plot_metrics(args.output_dir, args.output, args.metric)
    except (OSError, ValueError, ImportError) as e:
        print(f'trax-sparse-plot: error: {e}', file=sys.stderr)
        return 1
    print(path)
    return 0


def console_main() -> None:
    """Entry point of the `trax-sparse-plot` console script."""
    sys.exit(main())


if __name__ == '__main__':
    console_main()


__all__ = ['PLOT_FILE', 'console_main', 'main', 'plot_metrics', 'plot_if_possible']
