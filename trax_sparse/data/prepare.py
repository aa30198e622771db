"""Fetches and prepares the embedded default corpus (Shakespeare) for offline use.

    python -m trax_sparse.data.prepare [--data_dir=DIR] [--force]

Idempotent: when `shakespeare_works` is already prepared in the data dir it returns at once.
The data dir is --data_dir, else $TRAX_SPARSE_DATA_DIR, else the per-user
$XDG_DATA_HOME/trax_sparse (~/.local/share/trax_sparse); it is created if missing. Run by
`make test` and `make demo`.
"""
import argparse
import sys
import time
from typing import Sequence

from trax_sparse.data import shakespeare
from trax_sparse.data.corpora import DATA_DIR_ENV, resolve_data_dir, user_data_dir
from trax_sparse.data.extras import install_command, installed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m trax_sparse.data.prepare',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--data_dir', default=None,
                        help=f'where TFDS datasets live (default: ${DATA_DIR_ENV}, else '
                             f'{user_data_dir()})')
    parser.add_argument('--force', action='store_true',
                        help='delete the prepared dataset and prepare it again')
    parser.add_argument('--verbose', action='store_true',
                        help='show TFDS progress bars and warnings')
    args = parser.parse_args(argv)
    missing = [m for m in ('tensorflow_datasets', 'importlib_resources') if not installed(m)]
    if missing:
        print(f"error: preparing the corpus needs {' and '.join(missing)} (not installed): "
              f"{install_command(['data'])}", file=sys.stderr)
        return 1
    if not args.verbose:
        _quiet_tfds()
    data_dir = resolve_data_dir(args.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f'error: cannot create the data dir {str(data_dir)!r} ({err.strerror}); choose '
              f'another with --data_dir or ${DATA_DIR_ENV}', file=sys.stderr)
        return 1
    start = time.perf_counter()
    if args.force:
        shakespeare.remove_shakespeare(data_dir)
    elif shakespeare.is_shakespeare_prepared(data_dir):
        print(f'{shakespeare.DATASET_NAME} is already prepared in {data_dir} '
              f'({time.perf_counter() - start:.1f} s)')
        return 0
    try:
        path = shakespeare.prepare_shakespeare(data_dir)
    except (ConnectionError, ValueError, OSError, ImportError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'prepared {shakespeare.DATASET_NAME} in {path} ({time.perf_counter() - start:.1f} s)')
    return 0


def _quiet_tfds() -> None:
    """No TFDS progress bars or absl warnings (e.g. 'Variant folder ... has no dataset_info')."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return
    tfds.disable_progress_bar()


if __name__ == '__main__':
    sys.exit(main())
