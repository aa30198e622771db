"""Sparse FF alone against the dense model over a long run: the recipes of issue 24.

The parity setup (examples/perplexity_parity.py: byte-level Shakespeare, d_model 256,
2 layers, equal parameters) trained to 3000 steps, two seeds per recipe, each recipe one
set of `SparseFFConfig` bindings on the "+ sparse FF" variant. Prints each recipe's
validation nats/byte at the last step its runs and the dense runs all reached, the gap to the
dense run of the same seed and the gap of the means, and draws every evaluation's curves.

    .venv/bin/python examples/sparse_ff_recipes.py                  # every recipe
    .venv/bin/python examples/sparse_ff_recipes.py --recipes after_quant1 --seeds 0
    .venv/bin/python examples/sparse_ff_recipes.py --recipes after_quant1 --steps 6000
    .venv/bin/python examples/sparse_ff_recipes.py --report_only    # table + PNG from runs/
    .venv/bin/python examples/sparse_ff_recipes.py --quick          # tiny sizes, seconds

Runs live in runs/sff_trend/<recipe>_seed<k>; rerunning resumes unfinished ones, and
finished ones are not trained again.
"""
import argparse
import json
import os
import sys

import gin

from trax_sparse import fastmath

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import perplexity_parity as parity  # noqa: E402  (the setup, training and curve reading)

LONG_RUN = ['train.eval_every = 500', 'train.checkpoint_every = 500']
SPARSE = ['ScalingTransformerLM.ff_sparsity = @SparseFFConfig()',
          'SparseFFConfig.n_elements_in_block = 32']
TRAX = ['SparseFFConfig.mask_after_activation = False']     # Trax's formula: mask inside
AFTER_QUANT1 = ['SparseFFConfig.mask_after_activation = True', 'SparseFFConfig.quant_prob = 1.0']
# recipe -> (run directory prefix, parity variant, bindings). 'dense' is the baseline.
RECIPES = {
    'dense': ('dense', 'dense', []),
    'default': ('sparse_ff_after', '+ sparse FF', SPARSE),       # mask after the activation
    'trax': ('sparse_ff_trax_relu', '+ sparse FF', SPARSE + TRAX),
    'after_quant1': ('sparse_ff_after_quant1', '+ sparse FF', SPARSE + AFTER_QUANT1),
    'after_quant1_balance': ('sparse_ff_after_quant1_lb01', '+ sparse FF',
                             SPARSE + AFTER_QUANT1 + ['SparseFFConfig.load_balance = 0.01']),
    'n16_after_quant1': ('sparse_ff_n16_after_quant1', '+ sparse FF',
                         SPARSE + AFTER_QUANT1 + ['SparseFFConfig.n_elements_in_block = 16',
                                                  'SparseFFConfig.d_lowrank = 30']),
    # gin/experiments/parity_sparse_ff_1in8.gin: 1-in-8, rank 30, quant_prob 1.0
    'n8_after_quant1': ('sparse_ff_n8_after_quant1', '+ sparse FF 1-in-8', []),
}
QUICK = ['train.steps = 2', 'train.eval_every = 1', 'train.checkpoint_every = 2']


def run_dir(out: str, recipe: str, seed: int) -> str:
    return os.path.join(out, f'{RECIPES[recipe][0]}_seed{seed}')


def train(recipe: str, seed: int, out: str, quick: bool, steps: int = 3000) -> None:
    """Trains (or resumes) one recipe and seed to `steps`; a finished run is left as it is
    (a larger `steps` continues it: the schedule and the data go on as in one longer run)."""
    prefix, variant, bindings = RECIPES[recipe]
    if quick:        # the parity script's tiny sizes (they end in a 2-step run: ours after)
        bindings = parity.QUICK + bindings + QUICK
    else:
        bindings = LONG_RUN + [f'train.steps = {steps}'] + bindings
    parity.train_one(variant, seed, bindings, run_dir(out, recipe, seed))


def gaps(curves: dict) -> list[dict]:
    """One row per recipe: its values at the last common step, the gap of each seed to the
    dense run of that seed, and the gap of the means (percent)."""
    dense = curves['dense']
    rows = []
    for recipe, runs in curves.items():
        seeds = sorted(s for s in runs if runs[s] and dense.get(s))
        if recipe == 'dense' or not seeds:
            continue
        step = min(runs[s][-1][0] for s in seeds + [s for s in dense if dense[s]])
        value = {s: dict(runs[s])[step] for s in seeds}
        base = {s: dict(dense[s]).get(step) for s in seeds}
        if any(v is None for v in base.values()):
            continue
        rows.append({'recipe': recipe, 'step': step, 'values': value,
                     'gaps': {s: 100 * (value[s] / base[s] - 1) for s in seeds},
                     'gap_of_means': 100 * (sum(value.values()) / sum(base.values()) - 1)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ['| recipe | step | nats/byte (seeds) | gap per seed | gap of the means |',
             '|---|---|---|---|---|']
    for r in rows:
        values = ' / '.join(f'{v:.3f}' for v in r['values'].values())
        per_seed = ' / '.join(f'{g:+.1f}%' for g in r['gaps'].values())
        lines.append(f"| {r['recipe']} | {r['step']} | {values} | {per_seed} | "
                     f"{r['gap_of_means']:+.1f}% |")
    return '\n'.join(lines)


def plot(curves: dict, path: str) -> None:
    """Validation nats/byte against steps: one color per recipe, dashed for seed 1."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, (recipe, runs) in enumerate(curves.items()):
        for seed, curve in runs.items():
            if curve:
                steps, values = zip(*curve)
                ax.plot(steps, values, color=colors[i % len(colors)],
                        linestyle='-' if seed == 0 else '--', label=f'{recipe} (seed {seed})')
    ax.set_xlabel('training step')
    ax.set_ylabel('validation log-perplexity (nats/byte)')
    ax.set_title('Dense vs + sparse FF recipes (equal parameters)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--recipes', default=','.join(RECIPES),
                        help=f'comma-separated, from: {", ".join(RECIPES)}')
    parser.add_argument('--seeds', default='0,1')
    parser.add_argument('--steps', type=int, default=3000,
                        help='training steps of every run (more continues finished runs)')
    parser.add_argument('--output_dir', default=None,
                        help='default runs/sff_trend (quick: runs/sff_quick)')
    parser.add_argument('--report_only', action='store_true')
    parser.add_argument('--quick', action='store_true', help='tiny models, 2 steps (a test)')
    args = parser.parse_args(argv)
    recipes = ['dense'] + [r for r in args.recipes.split(',') if r and r != 'dense']
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f'--recipes: unknown {unknown}; known: {", ".join(RECIPES)}')
    seeds = [int(s) for s in args.seeds.split(',')]
    if args.quick:
        os.environ.setdefault('XLA_FLAGS', parity.QUICK_XLA_FLAGS)
    out = args.output_dir or os.path.join(parity.ROOT, 'runs',
                                          'sff_quick' if args.quick else 'sff_trend')
    fastmath.set_backend('jax')
    if not args.report_only:
        for recipe in recipes:
            for seed in seeds:
                train(recipe, seed, out, args.quick, args.steps)
    gin.clear_config()
    curves = {r: {s: parity.validation_curve(run_dir(out, r, s)) for s in seeds
                  if os.path.exists(run_dir(out, r, s))} for r in recipes}
    rows = gaps(curves)
    table, png = markdown(rows), os.path.join(out, 'sparse_ff_recipes.png')
    plot(curves, png)
    print(table + f'\n\ncurves: {png}')
    with open(os.path.join(out, 'recipes.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    return dict(rows=rows, table=table, png=png)


if __name__ == '__main__':
    main()
