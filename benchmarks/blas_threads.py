"""SparseFF's NumPy predict step on a busy machine: the library's BLAS threads vs OpenBLAS's.

One token, batch 1, d 2048, d_ff 16384, N 64 (NumPy backend, `layer.pure_fn`), while a
CPU-bound process (a busy loop, started here) runs beside it. Each setting runs in its own
subprocess, so OpenBLAS reads its environment afresh:
- default: the user's environment without OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, the
  library's default settings (`fastmath.tuning().blas_threads` = 1 for its own calls);
- OPENBLAS_NUM_THREADS=1: the environment variable the other benchmarks set;
- library control off: default environment and `fastmath.tuned(blas_threads=None)`
  (what the library did before it controlled its BLAS threads).
The settings are interleaved, --repeats times. Each row: the median and the 10th-90th
percentiles over --steps steps. Also printed: what a BLAS limit costs per call.
Acceptance (issue 22): default within 1.5x of OPENBLAS_NUM_THREADS=1.

Run: .venv/bin/python benchmarks/blas_threads.py [--repeats 3] [--steps 200] [--no-busy]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

SETTINGS = {   # name -> (environment changes, library BLAS control)
    'default': ({}, True),
    'OPENBLAS_NUM_THREADS=1': ({'OPENBLAS_NUM_THREADS': '1'}, True),
    'library control off': ({}, False),
}
BLAS_VARIABLES = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def child(args) -> None:
    """Times the predict step in this process and prints one JSON line."""
    from threadpoolctl import threadpool_info

    from trax_sparse import fastmath, shapes
    from trax_sparse import layers as tl
    from trax_sparse.fastmath import blas_threads

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(64, 1, 1, args.d)).astype(np.float32)       # [steps', B, 1, d]
    layer = tl.SparseFF(args.d_ff, n_elements_in_block=args.n, mode='predict')
    with fastmath.use_backend('numpy'), fastmath.tuned(
            **({} if args.control else {'blas_threads': None})):
        signature = shapes.signature(tokens[0])
        # Random weights of the right shapes (an init of 268 MB on NumPy's keyed RNG is slow).
        weights = fastmath.tree_map(lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype),
                                    layer.weights_signature(signature))
        state = fastmath.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                  layer.state_signature(signature))
        times = []
        for step in range(args.steps + 10):
            start = time.perf_counter()
            _, state = layer.pure_fn(tokens[step % len(tokens)], weights, state)
            times.append(time.perf_counter() - start)
        times = np.array(times[10:]) * 1e3                                 # ms, warm
        a, b = np.ones((1, 64), np.float32), np.ones((64, 64), np.float32)
        n = 20000
        costs = {}
        for name, fn in (('np.matmul', lambda: np.matmul(a, b)),
                         ('fastmath.numpy.matmul', lambda: fastmath.numpy.matmul(a, b)),
                         ('blas_scope() enter+exit', lambda: blas_scope_once(fastmath))):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            costs[name] = (time.perf_counter() - start) / n * 1e6
        with fastmath.blas_scope():
            inside = sorted({info['num_threads'] for info in threadpool_info()
                             if info['user_api'] == 'blas'})
    print(json.dumps({'median': float(np.median(times)), 'p10': float(np.percentile(times, 10)),
                      'p90': float(np.percentile(times, 90)), 'costs_us': costs,
                      'blas_threads_inside': inside,
                      'libraries': len(blas_threads.blas_libraries())}))


def blas_scope_once(fastmath) -> None:
    with fastmath.blas_scope():
        pass


def run_setting(name: str, args) -> dict:
    changes, control = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARIABLES}
    env.update(changes)
    command = [sys.executable, os.path.abspath(__file__), '--child', f'--d={args.d}',
               f'--d_ff={args.d_ff}', f'--n={args.n}', f'--steps={args.steps}'] + \
        ([] if control else ['--no-control'])
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--d', type=int, default=2048)
    parser.add_argument('--d_ff', type=int, default=16384)
    parser.add_argument('--n', type=int, default=64)
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--no-busy', dest='busy', action='store_false')
    parser.add_argument('--no-control', dest='control', action='store_false')
    parser.add_argument('--child', action='store_true')
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f'$ {" ".join([os.path.relpath(sys.executable), *sys.argv])}')
    print(f'{platform.machine()}, {os.cpu_count()} cores, load average before: '
          f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}; '
          f'{"with" if args.busy else "without"} a busy-loop process beside it')
    busy = (subprocess.Popen([sys.executable, '-c', 'while True: pass']) if args.busy else None)
    try:
        time.sleep(0.5)
        results = {name: [] for name in SETTINGS}
        for _ in range(args.repeats):
            for name in SETTINGS:
                results[name].append(run_setting(name, args))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    print(f'\nSparseFF predict, d {args.d}, d_ff {args.d_ff}, N {args.n}, batch 1, one token, '
          f'NumPy backend, ms per step: median (p10-p90) over {args.steps} steps, per run\n')
    print('| setting | ' + ' | '.join(f'run {i + 1}' for i in range(args.repeats))
          + ' | median of runs | vs OPENBLAS_NUM_THREADS=1 | BLAS threads inside |')
    print('|---|' + '---|' * (args.repeats + 3))
    reference = statistics.median(r['median'] for r in results['OPENBLAS_NUM_THREADS=1'])
    for name, runs in results.items():
        median = statistics.median(r['median'] for r in runs)
        cells = ' | '.join(f"{r['median']:.2f} ({r['p10']:.2f}-{r['p90']:.2f})" for r in runs)
        print(f'| {name} | {cells} | {median:.2f} | {median / reference:.2f}x | '
              f"{runs[0]['blas_threads_inside']} |")
    costs = results['default'][0]['costs_us']
    print('\nPer call (default setting, 1x64 @ 64x64): '
          + ', '.join(f'{k} {v:.2f} us' for k, v in costs.items()))


if __name__ == '__main__':
    main()
