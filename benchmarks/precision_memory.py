"""Training-step memory in float32 and bfloat16 (compute_dtype), from shapes alone.

For each model, one training step (the gradient of the loss w.r.t. every weight) is
compiled, not run, in both compute dtypes; the table gives
- XLA's memory analysis of the compiled step on this machine: peak = arguments + outputs +
  temporaries - aliased, and the temporaries alone;
- the bytes autodiff saves from the forward pass for the backward (`saved_residual_bytes`,
  the residuals of jax.vjp): what a training step holds between its two passes on any
  platform, independent of how this backend's compiler treats 16-bit floats.
Weights, gradients and the optimizer state stay float32 in both (the master copy).

    .venv/bin/python benchmarks/precision_memory.py             # TransformerLM 2K, Terraformer 8K
    .venv/bin/python benchmarks/precision_memory.py --quick     # tiny sizes (a test)
"""
import argparse
import sys
import time

import jax
import numpy as np

from trax_sparse import fastmath, models, shapes
from trax_sparse import layers as tl

MIB = 2 ** 20
DTYPES = ('float32', 'bfloat16')


def lm_case(length: int, d_model: int, layers: int, **sparse) -> tuple:
    """(model builder, batch) of a decoder-only LM on `length` tokens."""
    def build(dtype: str) -> tl.Layer:
        return models.ScalingTransformerLM(256, d_model=d_model, d_ff=4 * d_model,
                                           n_layers=layers, n_heads=max(1, d_model // 64),
                                           dropout=0.0, max_len=length, compute_dtype=dtype,
                                           **sparse)
    tokens = np.ones((1, length), np.int32)
    return build, (tokens, tokens, np.ones(tokens.shape, np.float32))


def terraformer_case(length: int, target_len: int, d_model: int, layers: int,
                     chunk_len: int) -> tuple:
    """(model builder, batch) of the LSH, reversible Terraformer on `length` input tokens."""
    def build(dtype: str) -> tl.Layer:
        return models.Terraformer(256, d_model=d_model, d_ff=4 * d_model,
                                  n_encoder_layers=layers, n_decoder_layers=layers,
                                  n_heads=max(1, d_model // 64), d_attention_key=64,
                                  d_attention_value=64, encoder_attention_type='lsh',
                                  decoder_attention_type='lsh', chunk_len=chunk_len,
                                  n_buckets=64, n_hashes=2, dropout=0.0,
                                  max_len=length + target_len, compute_dtype=dtype)
    batch = (np.ones((1, length), np.int32), np.ones((1, target_len), np.int32),
             np.ones((1, target_len), np.float32))
    return build, batch


def step_memory(model: tl.Layer, batch: tuple) -> dict:
    """XLA's peak and temporaries of jit(grad(loss)), and autodiff's residual bytes."""
    loss_layer = tl.CrossEntropyLoss()
    inputs = batch[0] if model.n_in == 1 else batch[:2]
    with fastmath.use_backend('jax'):
        backend = fastmath.backend()
        signature = shapes.signature(inputs)
        weights = tl.weights_signature(model, signature)
        _, state = model.init(signature)

        def loss(w):
            out, _ = model.pure_fn(inputs, w, state, np.array([0, 1], np.uint32))
            logits = out[0] if isinstance(out, tuple) else out
            return loss_layer((logits, batch[1], batch[2]))

        structs = fastmath.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), weights)
        memory = backend.memory_analysis(jax.jit(jax.grad(loss)), structs)
        residuals = backend.saved_residual_bytes(loss, structs)
    peak = (memory['arguments'] + memory['outputs'] + memory['temporaries']
            - memory['aliased'])
    return dict(peak=peak, temporaries=memory['temporaries'],
                residuals=sum(residuals.values()), residuals_by_dtype=residuals)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes (a test)')
    args = parser.parse_args(argv)
    flags = ' '.join(sys.argv[1:] if argv is None else argv)
    print(f'command: .venv/bin/python benchmarks/precision_memory.py {flags}')
    if args.quick:
        cases = {'TransformerLM, 64 tokens': lm_case(64, 32, 1),
                 'Terraformer (LSH, reversible), 128 tokens': terraformer_case(128, 16, 32, 1,
                                                                              32)}
    else:
        cases = {'TransformerLM, 2K tokens (d 512, 6 layers)': lm_case(2048, 512, 6),
                 'Scaling Transformer all sparse, 2K tokens (d 512, 6 layers)': lm_case(
                     2048, 512, 6, ff_sparsity=64, attention_type='sparse_qkv',
                     qkv_sparsity=8, loss_sparsity=4),
                 'Terraformer (LSH, reversible), 8K tokens (d 256, 6+6)': terraformer_case(
                     8192, 256, 256, 6, 128)}
    rows = []
    for name, (build, batch) in cases.items():
        start = time.time()
        result = {dtype: step_memory(build(dtype), batch) for dtype in DTYPES}
        rows.append(dict(model=name, **{f'{k}_{dtype}': v for dtype in DTYPES
                                        for k, v in result[dtype].items()}))
        print(f'   {name}: {time.time() - start:.0f} s', flush=True)
    print('\n| model | XLA peak f32 / bf16 (MiB) | ratio | XLA temporaries f32 / bf16 | ratio '
          '| saved residuals f32 / bf16 (MiB) | ratio |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        cells = []
        for key in ('peak', 'temporaries', 'residuals'):
            f32, bf16 = r[f'{key}_float32'], r[f'{key}_bfloat16']
            cells += [f'{f32 / MIB:,.0f} / {bf16 / MIB:,.0f}', f'{bf16 / max(f32, 1):.2f}x']
        print(f'| {r["model"]} | ' + ' | '.join(cells) + ' |')
    return rows


if __name__ == '__main__':
    main()
