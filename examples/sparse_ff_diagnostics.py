"""Sparse FF diagnostics (issue 24): what the SparseFF controller does in a trained model.

Given a training output dir of a model with SparseFF layers (its newest checkpoint and the
operative gin config stored with it), on the run's held-out validation batches (the first
train.eval_steps batches of train.eval_inputs: those the trainer's evals use):
1. validation nats/byte with the hard mask (one-hot of argmax: the normal eval) and with
   the soft mask (softmax(logits), the mask of training's soft calls);
2. per SparseFF layer: the controller's mean choice entropy (softmax(logits) per block, in
   nats, against log N) and the units never chosen (argmax) over the validation tokens;
3. per SparseFF layer: gradient norms (jax.grad of the training loss, train mode, on a few
   training batches) of the controller weights against the main weights W1 and W2.

    .venv/bin/python examples/sparse_ff_diagnostics.py runs/sff_trend/sparse_ff_seed0
    .venv/bin/python examples/sparse_ff_diagnostics.py --quick     # trains a tiny model first

The masks are applied by this script, not by the layer: each SparseFF of the eval model
gets, for the diagnostic passes only, a forward built from `controller_logits`,
`masked_dense_hidden` and `dense_output` of trax_sparse/layers/sparse_ff.py. The hard-mask
pass must equal the model's own eval (checked: `hard_vs_eval`). Validation runs on NumPy,
the gradients on JAX.
"""
import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Iterator

import gin
import numpy as np

from trax_sparse import configurables, fastmath, shapes, training
from trax_sparse import layers as tl
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers import sparse_ff as sff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_GIN = os.path.join(ROOT, 'gin', 'experiments', 'parity_sparse_ff.gin')
QUICK = ['d_model = 16', 'n_heads = 2', 'n_layers = 1', 'seq_len = 16', 'batch_size = 2',
         'eval/tfds_lm_stream.batch_size = 2', 'ScalingTransformerLM.d_ff = 64',
         'ScalingTransformerLM.ff_sparsity = 8', 'train.steps = 3', 'train.eval_every = 3',
         'train.eval_steps = 2', 'train.checkpoint_every = 3', 'train.plot = False']
QUICK_XLA_FLAGS = ('--xla_backend_optimization_level=0 '
                   '--xla_llvm_disable_expensive_passes=true')


class DiagnosticsError(Exception):
    """A run dir the diagnostics cannot read (one line naming the dir and what was expected)."""


def load_run(run_dir: str) -> tuple[str, Any, int]:
    """(gin config text, weights, step) of the newest valid checkpoint in `run_dir`."""
    if not os.path.isdir(run_dir):
        raise DiagnosticsError(f'{run_dir}: not a directory (expected a training output dir)')
    ckpt = training.load_latest(training.checkpoint.find_checkpoint_dir(run_dir))
    if ckpt is None:
        raise DiagnosticsError(f'{run_dir}: no usable checkpoint (expected checkpoints/ckpt-*.json '
                               f'written by the trainer)')
    text = training.checkpointer.operative_config(ckpt, run_dir)
    if not text:
        raise DiagnosticsError(f'{run_dir}: no operative gin config (expected config.gin or '
                               f'one stored in the checkpoint) to rebuild the model from')
    return text, ckpt.weights, int(ckpt.metadata.get('step', 0))


def sparse_ff_layers(layer: tl.Layer, weights: Any, path: str = '') -> Iterator[tuple]:
    """(path, SparseFF layer, its weights) of every SparseFF in `layer`'s tree, in order;
    `weights` is any tree shaped like the layer's weights (gradients too)."""
    path = f'{path}/{layer.name}' if path else layer.name
    if isinstance(layer, sff.SparseFF):
        yield path, layer, weights
        return
    for i, (sub, w) in enumerate(zip(layer.sublayers, layer.sublayer_weights(weights))):
        yield from sparse_ff_layers(sub, w, f'{path}[{i}]')


def softmax(logits: Any) -> Any:
    """softmax over the last axis (a block's N units)."""
    return xnp.exp(logits - fastmath.logsumexp(logits, axis=-1, keepdims=True))


class Probe:
    """Per SparseFF layer: entropy sums and argmax counts over the (weighted) tokens."""

    def __init__(self, layers: list):
        self.entropy = [0.0] * len(layers)
        self.counts = [np.zeros((layer.n_blocks, n_units(w)), np.int64) for _, layer, w in layers]
        self.tokens = 0.0
        self.token_weights = None       # [T] of the batch being run, set by `validation_loss`

    def record(self, index: int, probs: Any, choices: Any) -> None:
        probs, choices = np.asarray(probs, np.float64), np.asarray(choices)
        entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=-1).mean(-1)  # [T]
        self.entropy[index] += float(np.sum(entropy * self.token_weights))
        used = self.token_weights > 0
        blocks = np.broadcast_to(np.arange(choices.shape[-1]), choices.shape)
        np.add.at(self.counts[index], (blocks[used], choices[used]), 1)


def n_units(weights: Any) -> int:
    """N, the units per block, from a SparseFF's weights (W1ᵀ is [d_ff/N, N, d])."""
    return int(weights[1][0].shape[1])


def masked_forward(layer: sff.SparseFF, soft: bool, probe: Probe,
                   index: int) -> Callable[[Any], Any]:
    """A forward for `layer` with the soft (softmax) or hard (argmax one-hot) mask; the hard
    one records the controller's entropy and choices in `probe` (as layer `index`)."""
    def forward(x: Any) -> Any:
        controller, main = layer.weights
        tokens = x.reshape(-1, x.shape[-1])
        block_size = n_units(layer.weights)
        logits = sff.controller_logits(tokens, controller, layer.n_blocks, block_size)
        probs = softmax(logits)
        choices = xnp.argmax(logits, axis=-1)
        if not soft:
            probe.record(index, probs, choices)
        mask = probs.astype(x.dtype) if soft else sff.one_hot(choices, block_size, x.dtype)
        # The layer's activation function (act(0) == 0, checked when the layer was built).
        hidden = sff.masked_dense_hidden(tokens, mask, main, layer.activation)
        return sff.dense_output(hidden, main).reshape(x.shape)
    return forward


@contextlib.contextmanager
def masks(layers: list, soft: bool, probe: Probe) -> Iterator[None]:
    """Within: every SparseFF in `layers` runs `masked_forward` instead of its own forward."""
    for index, (_, layer, _) in enumerate(layers):
        layer.forward = masked_forward(layer, soft, probe, index)
    try:
        yield
    finally:
        for _, layer, _ in layers:
            del layer.forward


def validation_loss(model: tl.Layer, weights: Any, state: Any, batches: list,
                    probe: Probe | None = None) -> float:
    """Mean cross-entropy (nats/token) weighted by the batches' weights, as the Evaluator."""
    loss, total, weighted = tl.CrossEntropyLoss(), 0.0, 0.0
    for inputs, targets, mask in batches:
        if probe is not None:
            probe.token_weights = np.asarray(mask, np.float64).reshape(-1)
            probe.tokens += float(np.sum(mask))
        logits, _ = model.pure_fn(inputs, weights, state, fastmath.random.get_prng(0))
        value, _ = loss.pure_fn((logits, targets, mask), (), (), None)
        weighted += float(value) * float(np.sum(mask))
        total += float(np.sum(mask))
    return weighted / total


def build(mode: str, batch: tuple, weights: Any = None) -> tuple[tl.Layer, Any, Any]:
    """The configured train.model in `mode`, initialized for `batch`: (model, weights, state);
    the checkpoint's `weights` replace the initial ones (same tree required)."""
    model = gin.query_parameter('train.model').scoped_configurable_fn(mode=mode)
    if model.n_in != 1:
        raise DiagnosticsError(f'train.model takes {model.n_in} inputs: expected a language '
                               f'model (one input, tokens)')
    init_weights, state = model.init(shapes.signature(batch[0]))
    if weights is not None:
        training.train_step.check_same_tree('weights', weights, init_weights, 'checkpoint')
    return model, (init_weights if weights is None else fastmath.to_backend(weights)), state


def first_batches(binding: str, n: int) -> list:
    """The first `n` batches of the stream bound to `binding` (e.g. train.eval_inputs), opened
    as the trainer opens it (a fresh stream: the batches every eval of the run used)."""
    try:
        reference = gin.query_parameter(binding)
    except ValueError:
        reference = None
    if reference is None:
        raise DiagnosticsError(f'the run\'s config binds no {binding} (expected the data '
                               f'streams of a trainer run)')
    stream = iter(training.tasks.open_stream(reference.scoped_configurable_fn))
    return [tuple(np.asarray(a) for a in next(stream)) for _ in range(n)]


def validation(batches: list, ckpt_weights: Any) -> dict:
    """Hard-mask, soft-mask and normal-eval nats/byte, and the per-layer controller stats
    (NumPy backend)."""
    with fastmath.use_backend('numpy'):
        model, weights, state = build('eval', batches[0], ckpt_weights)
        layers = list(sparse_ff_layers(model, weights))
        if not layers:
            raise DiagnosticsError(f'{model.name} has no SparseFF layer: expected a model with '
                                   f'ff_sparsity set (a sparse FF)')
        probe = Probe(layers)
        normal = validation_loss(model, weights, state, batches)
        with masks(layers, soft=False, probe=probe):
            hard = validation_loss(model, weights, state, batches, probe)
        with masks(layers, soft=True, probe=probe):
            soft = validation_loss(model, weights, state, batches)
    stats = []
    for (path, layer, w), entropy, counts in zip(layers, probe.entropy, probe.counts):
        n = counts.shape[1]
        used = (counts > 0).sum(axis=1)                       # units ever chosen, per block
        stats.append(dict(path=path, n=n, blocks=layer.n_blocks, d_ff=counts.size,
                          entropy=entropy / probe.tokens, log_n=float(np.log(n)),
                          used_mean=float(used.mean()), used_min=int(used.min()),
                          dead=int(counts.size - used.sum()),
                          dead_fraction=float(counts.size - used.sum()) / counts.size))
    return dict(normal=normal, hard=hard, soft=soft, hard_vs_eval=abs(hard - normal),
                tokens=probe.tokens, layers=stats)


def _norm(tree: Any) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64)))
                             for a in fastmath.tree_leaves(tree))))


def gradient_norms(batches: list, ckpt_weights: Any, seed: int = 0) -> list[dict]:
    """Per SparseFF layer, the mean over `batches` of ‖∇‖ of the controller (W_c1, W_c2, b_c),
    W1 and W2 (jax.grad of the training loss, train mode: Gumbel choice and quant_prob coin
    drawn with key fold_in(seed, i) for batch i), and each ‖∇‖ / ‖w‖."""
    import jax
    with fastmath.use_backend('jax'):
        model, weights, state = build('train', batches[0], ckpt_weights)
        loss = tl.CrossEntropyLoss()

        def loss_fn(w, batch, rng):
            logits, _ = model.pure_fn(batch[0], w, state, rng)
            return loss.pure_fn((logits, batch[1], batch[2]), (), (), rng)[0]

        grad_fn = jax.jit(jax.grad(loss_fn))
        key = fastmath.random.get_prng(seed)
        grads = [grad_fn(weights, b, fastmath.random.fold_in(key, i))
                 for i, b in enumerate(batches)]
        rows = []
        for k, (path, _, w) in enumerate(sparse_ff_layers(model, weights)):
            per_batch = [list(sparse_ff_layers(model, g))[k][2] for g in grads]
            parts = {'controller': lambda t: t[0], 'W1': lambda t: sff.split_main(t[1])[0],
                     'W2': lambda t: sff.split_main(t[1])[2]}
            row = {'path': path}
            for name, part in parts.items():
                row[name] = float(np.mean([_norm(part(g)) for g in per_batch]))
                row[f'{name}_relative'] = row[name] / max(_norm(part(w)), 1e-30)
            rows.append(row)
    return rows


def logged_eval(run_dir: str, step: int) -> float | None:
    """The trainer's own validation log_perplexity at `step` (metrics.jsonl), if recorded."""
    if not os.path.exists(os.path.join(run_dir, 'metrics.jsonl')):
        return None
    values = [r['log_perplexity'] for r in training.read_metrics(run_dir)
              if r.get('split') == 'eval' and r.get('step') == step and 'log_perplexity' in r]
    return float(values[-1]) if values else None


def markdown(command: str, run_dir: str, step: int, val: dict, grads: list[dict],
             logged: float | None, n_train: int) -> str:
    """The three tables, with the command that made them."""
    logged_text = f'{logged:.4f}' if logged is not None else 'not recorded (or other batches)'
    lines = [f'`{command}`', '', f'{run_dir}, step {step}; validation: {val["tokens"]:.0f} '
             f'tokens; gradients: {n_train} training batches', '',
             '| mask | validation nats/byte |', '|---|---|',
             f'| hard (argmax one-hot: the eval) | {val["hard"]:.4f} |',
             f'| soft (softmax probabilities) | {val["soft"]:.4f} |',
             f'| (model\'s own eval, this script) | {val["normal"]:.4f} |',
             f'| (trainer\'s logged eval at step {step}) | {logged_text} |', '',
             '| SparseFF layer | N | blocks | choice entropy (nats) | / log N | units chosen '
             'per block (mean / min) | dead units | dead / d_ff |', '|' + '---|' * 8]
    for s in val['layers']:
        lines.append(f"| {s['path']} | {s['n']} | {s['blocks']} | {s['entropy']:.3f} | "
                     f"{s['entropy'] / s['log_n']:.2f} | {s['used_mean']:.1f} / {s['used_min']} "
                     f"| {s['dead']} | {100 * s['dead_fraction']:.1f}% |")
    lines += ['', '| SparseFF layer | ‖∇ controller‖ | ‖∇ W1‖ | ‖∇ W2‖ | controller / W1 | '
              '‖∇‖/‖w‖: controller, W1, W2 |', '|' + '---|' * 6]
    for g in grads:
        lines.append(f"| {g['path']} | {g['controller']:.3g} | {g['W1']:.3g} | {g['W2']:.3g} | "
                     f"{g['controller'] / g['W1']:.3g} | {g['controller_relative']:.2g}, "
                     f"{g['W1_relative']:.2g}, {g['W2_relative']:.2g} |")
    return '\n'.join(lines)


def diagnose(run_dir: str, n_eval: int | None = None, n_train: int = 4, seed: int = 0,
             command: str = '') -> dict:
    """All three diagnostics of the run in `run_dir`; returns them with the markdown table."""
    text, ckpt_weights, step = load_run(run_dir)
    gin.clear_config()
    configurables.add_search_paths()
    try:
        gin.parse_config(text)
        eval_steps = int(gin.query_parameter('train.eval_steps'))
        n_eval = n_eval or eval_steps
        val = validation(first_batches('train.eval_inputs', n_eval), ckpt_weights)
        grads = gradient_norms(first_batches('train.inputs', n_train), ckpt_weights, seed)
    except DiagnosticsError as e:
        raise DiagnosticsError(f'{run_dir}: {e}') from None
    finally:
        gin.clear_config()
    # The trainer's evals average train.eval_steps batches: comparable only over as many.
    logged = logged_eval(run_dir, step) if n_eval == eval_steps else None
    table = markdown(command, run_dir, step, val, grads, logged, n_train)
    return dict(step=step, validation=val, gradients=grads, logged_eval=logged, table=table)


def train_quick(run_dir: str) -> None:
    """A tiny parity_sparse_ff model (QUICK bindings), trained for a few steps in run_dir."""
    gin.clear_config()
    configurables.add_search_paths([QUICK_GIN])
    try:
        gin.parse_config_files_and_bindings([QUICK_GIN], QUICK)
        configurables.train(output_dir=run_dir, operative_config=gin.operative_config_str)
    finally:
        gin.clear_config()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('run_dir', nargs='?', help='a training output dir (SparseFF model)')
    parser.add_argument('--quick', action='store_true',
                        help='train a tiny sparse-FF model for 3 steps in a temp dir, then '
                        'diagnose it')
    parser.add_argument('--eval_batches', type=int, default=None,
                        help='validation batches (default: the run\'s train.eval_steps)')
    parser.add_argument('--train_batches', type=int, default=4,
                        help='training batches for the gradient norms')
    parser.add_argument('--seed', type=int, default=0, help='rng of the training-mode draws')
    args = parser.parse_args(argv)
    if args.quick == (args.run_dir is not None):
        parser.error('give exactly one of run_dir (a training output dir) and --quick')
    command = ' '.join(['.venv/bin/python', 'examples/sparse_ff_diagnostics.py']
                       + list(sys.argv[1:] if argv is None else argv))
    temp, xla_flags = None, os.environ.get('XLA_FLAGS')
    if args.quick:     # tiny graphs: skip XLA's costly passes (if jax starts in this run)
        os.environ.setdefault('XLA_FLAGS', QUICK_XLA_FLAGS)
        temp = tempfile.mkdtemp(prefix='sparse_ff_diagnostics_')
        args.run_dir = os.path.join(temp, 'sparse_ff_quick')
    try:
        if args.quick:
            train_quick(args.run_dir)
        result = diagnose(args.run_dir, args.eval_batches, args.train_batches, args.seed,
                          command)
    except (DiagnosticsError, training.CheckpointError) as e:
        raise SystemExit(f'sparse_ff_diagnostics: {e}') from None
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
            if xla_flags is None:       # called in-process: leave no flag to later processes
                os.environ.pop('XLA_FLAGS', None)
    print(result['table'])
    return result


if __name__ == '__main__':
    main()
