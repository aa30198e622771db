"""Training speed: tokens/s of the dense TransformerLM vs sparse ScalingTransformerLMs.

Paper-like shapes scaled to a CPU: the sparse models raise d_ff by 1.5x (4096 -> 6144 in
the paper) to keep the parameter count of the dense baseline, use 1-in-N sparse FF with
d_lowrank = d_ff / N, sparse QKV with modules of 64 features and a 4-module sparse loss.
Each model trains with the real Loop (jit'd data-parallel step, Adafactor) on random
tokens; the first steps (compilation) are not timed.

    python benchmarks/train_speed.py                 # prints a markdown table
    python benchmarks/train_speed.py --d_model 512 --n_layers 4 --steps 20
"""
import argparse
import time

import numpy as np

from trax_sparse import fastmath, models, training


def random_tokens(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    while True:
        tokens = rng.integers(1, vocab_size, (batch_size, seq_len)).astype(np.int32)
        yield tokens, tokens, np.ones(tokens.shape, np.float32)


def configurations(args) -> dict:
    d_ff_sparse = args.d_ff * 3 // 2
    n_block = args.ff_block
    sparse_ff = dict(d_ff=d_ff_sparse, ff_sparsity=models.SparseFFConfig(
        n_block, d_lowrank=d_ff_sparse // n_block))
    sparse_qkv = dict(attention_type='sparse_qkv', qkv_sparsity=max(1, args.d_model // 64))
    return {
        'dense baseline': dict(d_ff=args.d_ff),
        '+ sparse FF': dict(sparse_ff),
        '+ sparse QKV': dict(sparse_qkv, d_ff=d_ff_sparse),
        '+ sparse FF + QKV + loss': dict(sparse_ff, **sparse_qkv, loss_sparsity=4),
    }


def measure(name: str, options: dict, args) -> dict:
    model = models.ScalingTransformerLM(args.vocab_size, d_model=args.d_model,
                                        n_layers=args.n_layers, n_heads=args.n_heads,
                                        dropout=0.0, max_len=args.seq_len, **options)
    task = training.TrainTask(random_tokens(args.batch_size, args.seq_len, args.vocab_size),
                              optimizer=training.Adafactor(),
                              lr_schedule=training.constant(0.01),
                              n_steps_per_checkpoint=10 ** 9)
    loop = training.Loop(model, task, random_seed=0, progress_bar=False)
    n_params = sum(int(np.prod(np.shape(w))) for w in fastmath.tree_leaves(loop.weights))
    start = time.perf_counter()
    loop.run(args.warmup)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    loop.run(args.steps)  # run() ends with a report, which waits for the last step
    elapsed = time.perf_counter() - start
    tokens = args.steps * args.batch_size * args.seq_len
    return {'model': name, 'params': n_params, 'tokens_per_second': tokens / elapsed,
            'ms_per_step': 1000 * elapsed / args.steps, 'first_steps_s': compile_s,
            'loss': loop.history[-1]['loss']}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--vocab_size', type=int, default=2048)
    parser.add_argument('--d_model', type=int, default=256)
    parser.add_argument('--d_ff', type=int, default=1024)
    parser.add_argument('--ff_block', type=int, default=16, help='N of the 1-in-N sparse FF')
    parser.add_argument('--n_layers', type=int, default=2)
    parser.add_argument('--n_heads', type=int, default=4)
    parser.add_argument('--seq_len', type=int, default=128)
    parser.add_argument('--batch_size', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--steps', type=int, default=10)
    args = parser.parse_args()
    fastmath.set_backend('jax')
    rows = [measure(name, options, args) for name, options in configurations(args).items()]
    base = rows[0]['tokens_per_second']
    print(f'd_model {args.d_model}, d_ff {args.d_ff} (sparse: {args.d_ff * 3 // 2}), '
          f'{args.n_layers} layers, {args.n_heads} heads, vocab {args.vocab_size}, batch '
          f'{args.batch_size} x {args.seq_len} tokens, Adafactor, {fastmath.device_count()} '
          f'device(s)\n')
    print('| model | params | tokens/s | ms/step | vs dense | first steps (s) |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        print(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {row['tokens_per_second']:.0f} | "
              f"{row['ms_per_step']:.1f} | {row['tokens_per_second'] / base:.2f}x | "
              f"{row['first_steps_s']:.1f} |")


if __name__ == '__main__':
    main()
