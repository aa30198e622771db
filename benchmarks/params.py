"""Parameter counts of the paper's configurations, next to the paper's sizes.

Counts come from the weights' shapes only (jax.eval_shape: nothing is
allocated), so the 800M models are counted in seconds on a laptop.

Run: .venv/bin/python benchmarks/params.py
"""
import time

import numpy as np

from trax_sparse import fastmath, models, shapes
from trax_sparse import layers as tl

VOCAB = 32000
C4 = dict(d_model=1024, n_encoder_layers=24, n_decoder_layers=24, n_heads=16, max_len=512)
SPARSE = dict(ff_sparsity=64, attention_type='sparse_qkv', qkv_sparsity=16, loss_sparsity=4)
ENC_DEC_SIG = (shapes.ShapeDtype((1, 512), np.int32), shapes.ShapeDtype((1, 256), np.int32))

# (name, model factory, input signature, the paper's size)
CONFIGS = [
    ('C4 baseline (T5-large-like, 24+24, d_ff 4096)',
     lambda: models.ScalingTransformer(VOCAB, d_ff=4096, mode='eval', **C4), ENC_DEC_SIG,
     '≈800M (T5-large ~770M)'),
    ('C4 + Sparse FF (N 64, d_ff 4096)',
     lambda: models.ScalingTransformer(VOCAB, d_ff=4096, ff_sparsity=64, mode='eval', **C4),
     ENC_DEC_SIG, 'same as baseline'),
    ('C4 + Sparse FF + QKV + loss (dec d_ff 6144, enc 4096)',
     lambda: models.ScalingTransformer(VOCAB, d_ff=6144, encoder_d_ff=4096, mode='eval', **C4,
                                       **SPARSE), ENC_DEC_SIG, 'same as baseline'),
    ('Decoder-only 24 layers, d_ff 4096 (decode benchmark baseline)',
     lambda: models.TransformerLM(VOCAB, d_model=1024, d_ff=4096, n_layers=24, n_heads=16,
                                  max_len=1024, mode='eval'),
     shapes.ShapeDtype((1, 256), np.int32), '-'),
    ('Decoder-only 24 layers, sparse FF+QKV+loss, d_ff 6144',
     lambda: models.ScalingTransformerLM(VOCAB, d_model=1024, d_ff=6144, n_layers=24,
                                         n_heads=16, max_len=1024, mode='eval', **SPARSE),
     shapes.ShapeDtype((1, 256), np.int32), '-'),
]


def main() -> None:
    print('command: .venv/bin/python benchmarks/params.py')
    print(f"| {'configuration':<62} | {'params':>10} | {'paper':<24} |")
    print(f"|{'-' * 64}|{'-' * 12}|{'-' * 26}|")
    with fastmath.use_backend('jax'):
        for name, make, sig, paper in CONFIGS:
            start = time.time()
            n = tl.count_params(make(), sig)
            print(f'| {name:<62} | {n / 1e6:>9.1f}M | {paper:<24} |  ({time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()
