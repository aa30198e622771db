"""Activation memory of the gradient vs depth: ReversibleSerial against the plain Serial twin.

For each depth, jit-compiles grad(loss) of a stack of RevNet blocks
[HalfResidual(LayerNorm, Dense), Swap, HalfResidual(LayerNorm, Dense(d_ff), Relu, Dense), Swap]
and reads XLA's `memory_analysis().temp_size_in_bytes` (buffers other than
arguments and outputs: the activations kept for the backward pass). The plain
twin runs the same layers with the same weights but differentiates them with
ordinary autodiff. Nothing is executed, only compiled.

    .venv/bin/python benchmarks/reversible_memory.py                      # B=8 L=512 d=256
    .venv/bin/python benchmarks/reversible_memory.py --results_file benchmarks/RESULTS.md
"""
import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trax_sparse import fastmath, shapes  # noqa: E402
from trax_sparse import layers as tl  # noqa: E402
from trax_sparse.testing import autodiff_twin  # noqa: E402


def plain_twin(layer: tl.Layer) -> tl.Layer:
    """The plain Serial that computes what `layer` computes, differentiated by autodiff."""
    return autodiff_twin(layer)


def revnet_stack(n_blocks: int, d_model: int, d_ff: int) -> tl.ReversibleSerial:
    blocks = [[tl.ReversibleHalfResidual(tl.LayerNorm(), tl.Dense(d_model)),
               tl.ReversibleSwap(),
               tl.ReversibleHalfResidual(tl.LayerNorm(), tl.Dense(d_ff), tl.Relu(),
                                         tl.Dense(d_model)),
               tl.ReversibleSwap()] for _ in range(n_blocks)]
    return tl.ReversibleSerial(blocks)


def grad_temp_bytes(n_blocks: int, reversible: bool, batch: int = 8, length: int = 512,
                    d_model: int = 256, d_ff: int = 1024) -> int:
    """XLA temp bytes of jit(grad(loss)) w.r.t. weights and inputs for `n_blocks` blocks."""
    model = revnet_stack(n_blocks, d_model, d_ff)
    x = shapes.ShapeDtype((batch, length, d_model), np.float32)
    with fastmath.use_backend('numpy'):  # only the shapes are needed; NumPy inits fastest.
        weights, state = model.init((x, x), rng=fastmath.random.get_prng(0))
    weights = jax.tree_util.tree_map(lambda w: jax.ShapeDtypeStruct(w.shape, w.dtype), weights)
    with fastmath.use_backend('jax'):
        layer = model if reversible else plain_twin(model)
        rng = fastmath.random.get_prng(1)

        def loss(weights, x1, x2):
            y1, y2 = layer.pure_fn((x1, x2), weights, state, rng)[0]
            return jnp.mean(y1 * y1) + jnp.mean(y2 * y2)

        arg = jax.ShapeDtypeStruct(x.shape, x.dtype)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(weights, arg, arg).compile()
        return int(compiled.memory_analysis().temp_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--depths', default='2,4,8,12', help='numbers of blocks, comma-separated')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--length', type=int, default=512)
    parser.add_argument('--d_model', type=int, default=256)
    parser.add_argument('--d_ff', type=int, default=1024)
    parser.add_argument('--results_file', default='',
                        help='if set, append the table to this markdown file')
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(',')]
    size = dict(batch=args.batch, length=args.length, d_model=args.d_model, d_ff=args.d_ff)
    mib = 2.0 ** 20
    one_activation = args.batch * args.length * args.d_model * 4 / mib

    rows = ['| blocks | plain Serial temp MiB | ReversibleSerial temp MiB | plain / reversible |',
            '|---|---|---|---|']
    measured = []
    for depth in depths:
        plain = grad_temp_bytes(depth, False, **size) / mib
        rev = grad_temp_bytes(depth, True, **size) / mib
        measured.append((depth, plain, rev))
        rows.append(f'| {depth} | {plain:.1f} | {rev:.1f} | {plain / rev:.1f}x |')
        print(rows[-1], flush=True)
    (d0, plain0, rev0), (d1, plain1, rev1) = measured[0], measured[-1]
    blocks = max(d1 - d0, 1)
    growth = (f'Growth per added block ({d0} -> {d1}): plain {(plain1 - plain0) / blocks:.1f} MiB, '
              f'reversible {(rev1 - rev0) / blocks:.1f} MiB.')

    xla_flags = os.environ.get('XLA_FLAGS', '')
    command = (f'XLA_FLAGS={xla_flags} ' if xla_flags else '') + \
        '.venv/bin/python benchmarks/reversible_memory.py ' + ' '.join(sys.argv[1:])
    device = jax.devices()[0]
    if (device.platform == 'cpu' and 'ynn_fusion_type' not in xla_flags
            and (rev1 - rev0) / blocks > 0.5 * one_activation):
        growth += (' On XLA:CPU the YNNPACK fusions materialize each LayerNorm scale broadcast to '
                   '[B, L, d] at the start of the program (one [B, L, d] buffer per LayerNorm, '
                   'i.e. 2 per block here): that, not stored activations, is what the reversible '
                   'column still grows by; rerun with '
                   '`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=` to see it without them.')
    text = '\n'.join([
        '## Reversible layers: activation memory vs depth',
        '',
        f'Command: `{command.strip()}`  ',
        f'Machine: {platform.machine()}, {device.platform} ({device.device_kind}), '
        f'jax {jax.__version__}.  ',
        f'Model: blocks of [HalfResidual(LayerNorm, Dense), Swap, HalfResidual(LayerNorm, '
        f'Dense(d_ff), Relu, Dense), Swap], B={args.batch}, L={args.length}, d={args.d_model}, '
        f'd_ff={args.d_ff}, float32 (one [B, L, d] activation = {one_activation:.1f} MiB).  ',
        'Metric: XLA `memory_analysis().temp_size_in_bytes` of jit(grad(loss)) w.r.t. weights '
        'and both inputs (compiled, not run). Plain = the same layers and weights differentiated '
        'by ordinary autodiff.',
        '',
        *rows,
        '',
        growth,
        '',
    ])
    print()
    print(text)
    if args.results_file:
        new_file = not os.path.exists(args.results_file)
        with open(args.results_file, 'a', encoding='utf-8') as f:
            if new_file:
                f.write('# trax_sparse benchmark results\n\n')
            f.write(text + '\n')
        print(f'appended to {args.results_file}')


if __name__ == '__main__':
    main()
