"""Perplexity parity: the dense TransformerLM vs Scaling Transformer variants at equal size.

The paper's first claim ("Sparse is Enough in Scaling Transformers", Jaszczur et al. 2021):
sparse FF, sparse QKV and the sparse loss layer keep the perplexity of a dense Transformer
with the same number of parameters. Every variant (gin/experiments/parity_*.gin) trains on
the embedded Shakespeare corpus with the same data order, schedule, steps and dropout and
within 1% of the dense model's parameters (printed; more than 3% stops the run). The dense
and the all-sparse model train with two seeds, so their spread says how much a difference
between variants can be noise. Then each variant's training step is timed, round-robin,
so that all see the same machine load. Output: a markdown table (final validation
log-perplexity in nats/byte, verdicts, step times) and a PNG of the validation curves.

    .venv/bin/python examples/perplexity_parity.py                 # the full run
    .venv/bin/python examples/perplexity_parity.py --quick         # tiny sizes, seconds
    .venv/bin/python examples/perplexity_parity.py --report_only   # table + PNG from runs/
    .venv/bin/python examples/perplexity_parity.py --compute_dtype bfloat16 --main_only
        # mixed precision: dense and all sparse, 2 seeds each, in runs/parity_bfloat16

Runs resume: rerunning the same command continues each unfinished run from its checkpoint.
"""
import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

import gin
import numpy as np

from trax_sparse import configurables, fastmath, shapes, training
from trax_sparse import layers as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = os.path.join(ROOT, 'gin', 'experiments')
VARIANTS = {                      # name -> (gin file, seeds)
    'dense': ('parity_dense.gin', (0, 1)),
    '+ sparse FF': ('parity_sparse_ff.gin', (0,)),
    '+ sparse FF 1-in-8': ('parity_sparse_ff_1in8.gin', (0,)),   # issue 24's recipe
    '+ sparse QKV': ('parity_sparse_qkv.gin', (0,)),
    '+ sparse FF + QKV': ('parity_sparse_ff_qkv.gin', (0,)),
    '+ sparse loss': ('parity_sparse_loss.gin', (0,)),
    'all sparse': ('parity_sparse_all.gin', (0, 1)),
}
# The order of the runs: the main comparison first, the second seeds last.
ORDER = [('dense', 0), ('all sparse', 0), ('+ sparse FF', 0), ('+ sparse FF 1-in-8', 0),
         ('+ sparse QKV', 0),
         ('+ sparse FF + QKV', 0), ('+ sparse loss', 0), ('dense', 1), ('all sparse', 1)]
QUICK = ['d_model = 16', 'n_heads = 2', 'n_layers = 1', 'seq_len = 16', 'batch_size = 2',
         'eval/tfds_lm_stream.batch_size = 2', 'train.steps = 2', 'train.eval_every = 2',
         'train.eval_steps = 1', 'train.checkpoint_every = 2', 'train.plot = False']
# --quick and --main_only train the main comparison only (quick: compiling dominates, 3 XLA
# compiles per variant); every variant is still configured and counted, the others show as
# 'not run' in the table.
MAIN_ORDER = [('dense', 0), ('all sparse', 0), ('dense', 1), ('all sparse', 1)]
MODEL_FUNCTIONS = ('TransformerLM', 'ScalingTransformerLM')   # the variants' train.model
QUICK_XLA_FLAGS = ('--xla_backend_optimization_level=0 '
                   '--xla_llvm_disable_expensive_passes=true')
PARAMS_TOLERANCE = 0.03
PARITY = 0.02                     # "within 2%" of the dense model's log-perplexity


def slug(name: str) -> str:
    """'+ sparse FF + QKV' -> 'sparse_ff_qkv' (run directory names)."""
    words = [w for w in name.lower().replace('+', ' ').split() if w]
    return '_'.join(words)


def configure(name: str, bindings: list[str], seed: int = 0) -> None:
    """Parses the variant's gin file (+ bindings) into a fresh gin config."""
    gin.clear_config()
    configurables.add_search_paths([os.path.join(GIN, VARIANTS[name][0])])
    gin.parse_config_files_and_bindings([os.path.join(GIN, VARIANTS[name][0])],
                                        bindings + [f'train.random_seed = {seed}'])


def build_model(mode: str) -> tl.Layer:
    """The configured train.model in `mode` (call after `configure`)."""
    return gin.query_parameter('train.model').scoped_configurable_fn(mode=mode)


def count_params(name: str, bindings: list[str]) -> int:
    configure(name, bindings)
    return tl.count_params(build_model('eval'), shapes.ShapeDtype((1, 8), np.int32))


def train_one(name: str, seed: int, bindings: list[str], run_dir: str) -> None:
    """Trains (or resumes) one variant and seed in run_dir with the gin-configured train()."""
    configure(name, bindings, seed)
    start = time.time()
    loop = configurables.train(output_dir=run_dir, operative_config=gin.operative_config_str)
    print(f'   {name} seed {seed}: step {loop.step}, {time.time() - start:.0f} s', flush=True)


def validation_curve(run_dir: str) -> list[tuple[int, float]]:
    """[(step, validation nats/byte)] from the run's metrics.jsonl."""
    if not os.path.exists(os.path.join(run_dir, 'metrics.jsonl')):
        return []
    records = [r for r in training.read_metrics(run_dir) if r.get('split') == 'eval']
    curve = {int(r['step']): float(r['log_perplexity']) for r in records}
    return sorted(curve.items())


def random_batches(batch_size: int, seq_len: int, vocab_size: int = 258):
    rng = np.random.default_rng(0)
    while True:
        tokens = rng.integers(2, vocab_size, (batch_size, seq_len)).astype(np.int32)
        yield tokens, tokens, np.ones(tokens.shape, np.float32)


def time_steps(bindings: list[str], rounds: int, steps: int) -> dict[str, dict]:
    """Median wall and CPU ms per training step of every variant, timed round-robin.

    Each variant gets its own Loop (its configured model and optimizer, batches of the
    configured shape); after a compile step, every round runs `steps` steps of each
    variant in turn, so a change in the machine's load hits all of them alike.
    """
    loops = {}
    for name in VARIANTS:
        configure(name, bindings)
        batch, length = gin.query_parameter('%batch_size'), gin.query_parameter('%seq_len')
        optimizer = gin.query_parameter('train.optimizer').scoped_configurable_fn()
        task = training.TrainTask(random_batches(batch, length), optimizer=optimizer,
                                  lr_schedule=training.constant(1e-3),
                                  n_steps_per_checkpoint=10 ** 9)
        loops[name] = training.Loop(build_model('train'), task, random_seed=0,
                                    progress_bar=False)
        loops[name].run(1)                                      # compile
    wall = {name: [] for name in VARIANTS}
    cpu = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, loop in loops.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            loop.run(steps)                 # run() ends with a report: waits for the last step
            wall[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    ratios = {name: [w / d for w, d in zip(wall[name], wall['dense'])] for name in VARIANTS}
    return {name: dict(ms=1e3 * float(np.median(wall[name])),
                       cpu_ms=1e3 * float(np.median(cpu[name])),
                       ratio=float(np.median(ratios[name]))) for name in VARIANTS}


def logged_step_times(run_dirs: dict[str, str]) -> dict[str, dict] | None:
    """ms/step from the trainer's own speed records (steps_per_second; the first record,
    which includes compilation, is skipped when there are more). Rougher than `time_steps`:
    the runs saw different machine loads."""
    out = {}
    for name, run_dir in run_dirs.items():
        if not os.path.exists(os.path.join(run_dir, 'metrics.jsonl')):
            return None
        speeds = [r['steps_per_second'] for r in training.read_metrics(run_dir)
                  if r.get('split') == 'train' and r.get('steps_per_second')]
        if not speeds:
            return None
        out[name] = dict(ms=1e3 / float(np.median(speeds[1:] or speeds)), cpu_ms=None)
    for name in out:
        out[name]['ratio'] = out[name]['ms'] / out['dense']['ms']
    return out


def summarize(curves: dict, params: dict, timings: dict | None) -> list[dict]:
    """One row per variant: final validation nats/byte per seed, mean, spread, verdicts."""
    finals = {name: [c[-1][1] for c in curves[name].values() if c] for name in VARIANTS}
    dense = finals['dense']
    base = float(np.mean(dense)) if dense else float('nan')
    dense_spread = float(np.ptp(dense)) if len(dense) > 1 else 0.0
    rows = []
    for name in VARIANTS:
        values = finals[name]
        mean = float(np.mean(values)) if values else float('nan')
        spread = max(dense_spread, float(np.ptp(values)) if len(values) > 1 else 0.0)
        rows.append(dict(
            variant=name, params=params[name], params_vs_dense=params[name] / params['dense'] - 1,
            finals=values, mean=mean, spread=float(np.ptp(values)) if len(values) > 1 else None,
            diff=(mean - base) / base, within=mean - base <= PARITY * base,
            beyond_spread=abs(mean - base) > spread,
            steps=[c[-1][0] for c in curves[name].values() if c],
            **({} if timings is None else timings[name])))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The results table; a run that has not reached the last step is marked (at step N)."""
    last = max((s for r in rows for s in r['steps']), default=0)
    lines = ['| variant | params | vs dense | final validation nats/byte (seeds) | seed spread '
             '| vs dense | within 2% (or better) | difference beyond seed spread '
             '| train ms/step | step time vs dense |', '|' + '---|' * 10]
    for r in rows:
        if not r['finals']:
            lines.append(f"| {r['variant']} | {r['params'] / 1e6:.3f}M | "
                         f"{100 * r['params_vs_dense']:+.1f}% | not run |" + ' - |' * 6)
            continue
        seeds = ' / '.join(f'{v:.3f}' + (f' (at step {s})' if s < last else '')
                           for v, s in zip(r['finals'], r['steps']))
        spread = f"{r['spread']:.3f}" if r['spread'] is not None else '-'
        timing = (f"{r['ms']:.0f} | {r['ratio']:.2f}x" if 'ms' in r else '- | -')
        verdicts = ('-', '-') if r['variant'] == 'dense' else (
            'yes' if r['within'] else 'no', 'yes' if r['beyond_spread'] else 'no')
        lines.append(f"| {r['variant']} | {r['params'] / 1e6:.3f}M | "
                     f"{100 * r['params_vs_dense']:+.1f}% | {r['mean']:.3f} ({seeds}) | {spread} | "
                     f"{100 * r['diff']:+.1f}% | {verdicts[0]} | {verdicts[1]} | {timing} |")
    return '\n'.join(lines)


def plot(curves: dict, path: str, title: str) -> None:
    """Validation nats/byte against steps, one line per variant and seed."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for color, name in zip(colors, VARIANTS):
        for seed, curve in curves[name].items():
            if curve:
                steps, values = zip(*curve)
                ax.plot(steps, values, color=color, linestyle='-' if seed == 0 else '--',
                        label=f'{name} (seed {seed})')
    ax.set_xlabel('training step')
    ax.set_ylabel('validation log-perplexity (nats/byte)')
    ax.set_title(title)
    finals = [c[-1][1] for runs in curves.values() for c in runs.values() if c]
    if finals:
        ax.set_ylim(min(finals) - 0.1, min(finals) + 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='tiny models, 2 steps, dense and all sparse only (a test)')
    parser.add_argument('--output_dir', default=None, help='default runs/parity (quick: '
                        'runs/parity_quick)')
    parser.add_argument('--report_only', action='store_true',
                        help='no training: table and PNG from the runs in output_dir')
    parser.add_argument('--skip_timing', action='store_true',
                        help='no round-robin timing (--quick: never): step times '
                        'from the training logs instead')
    parser.add_argument('--timing_rounds', type=int, default=5)
    parser.add_argument('--timing_steps', type=int, default=5)
    parser.add_argument('--config', action='append', default=[],
                        help='extra gin binding for every variant (repeatable)')
    parser.add_argument('--compute_dtype', default=None,
                        help="the models' compute_dtype (e.g. bfloat16; default: the configs' "
                        "float32); default output_dir runs/parity_<dtype>")
    parser.add_argument('--main_only', action='store_true',
                        help='train dense and all sparse only (2 seeds each)')
    args = parser.parse_args(argv)
    if args.quick:      # tiny graphs: XLA's expensive LLVM passes would dominate (set before
        os.environ.setdefault('XLA_FLAGS', QUICK_XLA_FLAGS)   # the backend starts)
        # The second seed's run compiles the first one's steps again: XLA's persistent cache
        # (a temporary folder) hands it the executables.
        import jax
        cache = tempfile.mkdtemp(prefix='parity_quick_')
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        jax.config.update('jax_compilation_cache_dir', cache)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
        jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    fastmath.set_backend('jax')
    bindings = (QUICK if args.quick else []) + args.config
    runs = 'parity_quick' if args.quick else 'parity'
    if args.compute_dtype:
        bindings += [f"{fn}.compute_dtype = '{args.compute_dtype}'" for fn in MODEL_FUNCTIONS]
        runs += f'_{args.compute_dtype}'
    out = args.output_dir or os.path.join(ROOT, 'runs', runs)
    os.makedirs(out, exist_ok=True)
    print(f'== perplexity parity: {" ".join(sys.argv)}  ({time.strftime("%Y-%m-%d %H:%M")})')
    print(f'   bindings: {bindings or "(none)"}; runs in {out}', flush=True)

    params = {name: count_params(name, bindings) for name in VARIANTS}
    for name, n in params.items():
        ratio = n / params['dense'] - 1
        print(f'   {name}: {n:,} parameters ({100 * ratio:+.2f}% vs dense)')
        if abs(ratio) > PARAMS_TOLERANCE and not args.quick:
            raise SystemExit(f'{name} has {100 * ratio:+.1f}% parameters vs dense (> 3%): '
                             f'adjust its d_ff in {VARIANTS[name][0]}')
    run_dirs = {(name, seed): os.path.join(out, f'{slug(name)}_seed{seed}')
                for name, seed in ORDER}
    if not args.report_only:
        print('== training', flush=True)
        for name, seed in (MAIN_ORDER if args.quick or args.main_only else ORDER):
            train_one(name, seed, bindings, run_dirs[name, seed])
    timings = None
    if not (args.skip_timing or args.report_only or args.quick):
        print(f'== timing training steps ({args.timing_rounds} rounds x {args.timing_steps} '
              f'steps per variant, round-robin)', flush=True)
        timings = time_steps(bindings, args.timing_rounds, args.timing_steps)
        with open(os.path.join(out, 'timings.json'), 'w') as f:
            json.dump(timings, f, indent=1)
    elif os.path.exists(os.path.join(out, 'timings.json')):
        with open(os.path.join(out, 'timings.json')) as f:
            timings = json.load(f)
    gin.clear_config()
    if timings is None:
        timings = logged_step_times({name: run_dirs[name, 0] for name in VARIANTS})

    curves = {name: {seed: validation_curve(run_dirs[name, seed]) for seed in seeds}
              for name, (_, seeds) in VARIANTS.items()}
    rows = summarize(curves, params, timings)
    table = markdown_table(rows)
    png = os.path.join(out, 'validation_curves.png')
    plot(curves, png, 'Byte-level Shakespeare, equal parameters')
    print('\n== final validation log-perplexity (nats/byte) and training step time\n' + table)
    print(f'\nwithin 2% = mean - dense mean <= 2% of the dense mean; beyond seed spread = '
          f'|mean - dense mean| > the larger of the dense and the variant\'s seed ranges.\n'
          f'validation curves: {png}')
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    return dict(rows=rows, table=table, png=png)


if __name__ == '__main__':
    main()
