"""Training memory of a 12-block Terraformer vs a dense Transformer at a 4096-token input.

Both are encoder-decoders with 6 encoder + 6 decoder blocks, d_model 256, 4 heads, on
inputs of 4096 tokens and targets of 256. The Terraformer uses LSH attention (chunk 128,
64 buckets, 2 hashes) and reversible blocks; the Transformer dense attention and plain
residual blocks. Memory is XLA's temporary buffer size of the jitted gradient of the loss
(`jax.jit(...).lower(...).compile().memory_analysis()`), compiled on CPU, not run.

Run: .venv/bin/python benchmarks/terraformer_memory.py [--input_len=4096]
"""
import argparse
import time

import numpy as np

from trax_sparse import fastmath, models, shapes
from trax_sparse import layers as tl


def compiled_temp_mib(model: tl.Layer, batch: tuple) -> tuple[float, float, float]:
    """(temp MiB, argument MiB, compile seconds) of jit(grad(loss)) for `model`."""
    import jax
    loss_layer = tl.CrossEntropyLoss()
    with fastmath.use_backend('jax'):
        weights_sig = tl.weights_signature(model, tuple(shapes.signature(b) for b in batch[:2]))
        weights = fastmath.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), weights_sig)
        _, state = model.init(tuple(shapes.signature(b) for b in batch[:2]))

        def loss(w):
            (logits, _), _ = model.pure_fn(batch[:2], w, state, np.array([0, 1], np.uint32))
            return loss_layer((logits, batch[1], batch[2]))

        start = time.time()
        compiled = jax.jit(jax.grad(loss)).lower(weights).compile()
        seconds = time.time() - start
    analysis = compiled.memory_analysis()
    return (analysis.temp_size_in_bytes / 2**20, analysis.argument_size_in_bytes / 2**20,
            seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--input_len', type=int, default=4096)
    parser.add_argument('--target_len', type=int, default=256)
    args = parser.parse_args()
    print(f'command: .venv/bin/python benchmarks/terraformer_memory.py '
          f'--input_len={args.input_len} --target_len={args.target_len}')
    common = dict(d_model=256, d_ff=1024, n_encoder_layers=6, n_decoder_layers=6, n_heads=4,
                  dropout=0.0, max_len=args.input_len + args.target_len)
    batch = (np.ones((1, args.input_len), np.int32), np.ones((1, args.target_len), np.int32),
             np.ones((1, args.target_len), np.float32))
    rows = [
        ('Transformer (dense attention, plain residual blocks)',
         models.Transformer(256, mode='train', **common)),
        ('Terraformer (LSH attention, reversible blocks)',
         models.Terraformer(256, mode='train', d_attention_key=64, d_attention_value=64,
                            encoder_attention_type='lsh', decoder_attention_type='lsh',
                            chunk_len=128, n_buckets=64, n_hashes=2, **common)),
        ('Terraformer (sparse QKV decoder, sparse FF, reversible)',
         models.Terraformer(256, mode='train', encoder_attention_type='lsh',
                            decoder_attention_type='sparse_qkv', qkv_sparsity=4, ff_sparsity=16,
                            chunk_len=128, n_buckets=64, n_hashes=2, **common)),
    ]
    print(f'\n12 blocks (6 + 6), d_model 256, batch 1, inputs {args.input_len}, targets '
          f'{args.target_len}; jit(grad(loss)) compiled on CPU')
    print('| model | temp MiB | weights MiB | compile s |')
    print('|---|---|---|---|')
    for name, model in rows:
        temp, args_mib, seconds = compiled_temp_mib(model, batch)
        print(f'| {name} | {temp:,.1f} | {args_mib:,.1f} | {seconds:.0f} |', flush=True)


if __name__ == '__main__':
    main()
