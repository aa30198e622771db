"""The largest all-sparse Scaling Transformer whose training step fits 8 devices of 2 GB each:
weights replicated (data parallelism) against weights and optimizer state split (FSDP, and
tensor parallelism with FSDP).

ScalingTransformerLM with sparse FF (1-in-32, d_ff = 4·d_model), sparse QKV (8 modules) and
the sparse loss (4 modules), 8 layers, vocabulary 32000, Adam, batch 8 x 128 tokens (one
sequence per device on {'data': 8}: the weights, not the activations, fill the devices). For each
d_model of a grid the train step is compiled for 8 CPU devices with its shardings and not run:
XLA's memory analysis gives the bytes one device needs (arguments + outputs - donated +
temporaries). A model fits when that is at most the budget.

The question is what fits in memory, so every placement is compiled with XLA:CPU's
memory-optimized scheduler (`--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`;
XLA:CPU's default orders the step for concurrency); `--default_scheduler` compiles with the
default instead.

Run: .venv/bin/python benchmarks/sharded_memory.py [--budget_gb=2] [--layers=8] [--seq_len=128]
     [--default_scheduler]
Extra XLA flags (e.g. XLA_FLAGS=--xla_disable_hlo_passes=cpu-all-reduce-combiner) are kept; the
benchmark adds the 8 CPU devices (and the scheduler) to them.
"""
import os
import sys

MEMORY_SCHEDULER = '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'
if 'jax' not in sys.modules:
    _flags = os.environ.get('XLA_FLAGS', '')
    if 'xla_force_host_platform_device_count' not in _flags:
        _flags = f'{_flags} --xla_force_host_platform_device_count=8'
    if '--default_scheduler' not in sys.argv and 'xla_cpu_scheduler_type' not in _flags:
        _flags = f'{_flags} {MEMORY_SCHEDULER}'
    os.environ['XLA_FLAGS'] = _flags.strip()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from trax_sparse import fastmath, models, shapes  # noqa: E402
from trax_sparse import layers as tl  # noqa: E402
from trax_sparse.training import optimizers  # noqa: E402
from trax_sparse.training import train_step as ts  # noqa: E402
from trax_sparse.training.placement import Placement  # noqa: E402

GRID = (256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192)
PLACEMENTS = {
    "replicated, {'data': 8}": {'mesh_shape': {'data': 8}},
    "FSDP, {'data': 8}": {'mesh_shape': {'data': 8}, 'fsdp': True},
    "FSDP + tensor parallel, {'data': 2, 'model': 4}": {'mesh_shape': {'data': 2, 'model': 4},
                                                        'fsdp': True},
}


def scaling_lm(d_model: int, n_layers: int) -> tl.Layer:
    return models.ScalingTransformerLM(
        32000, d_model=d_model, d_ff=4 * d_model, n_layers=n_layers, n_heads=8, max_len=512,
        ff_sparsity=32, attention_type='sparse_qkv', qkv_sparsity=8, loss_sparsity=4,
        dropout=0.0, mode='train')


def step_bytes(d_model: int, n_layers: int, placement: Placement, seq_len: int
               ) -> tuple[int, int, float]:
    """(bytes per device of the compiled train step, parameters, compile seconds)."""
    model, loss = scaling_lm(d_model, n_layers), tl.CrossEntropyLoss()
    tx = optimizers.Adam().transform(lambda step: 1e-3)
    batch = (shapes.ShapeDtype((8, seq_len), np.int32),) * 2 + \
        (shapes.ShapeDtype((8, seq_len), np.float32),)
    key = np.array([0, 0], np.uint32)
    init = fastmath.abstract_eval(lambda k: ts.initialize(model, loss, tx, k, batch))(
        shapes.signature(key))
    signature = ts.TrainState(init['weights'], init['state'], init['opt_state'])
    specs = placement.train_state_specs(model, signature)
    shardings = ts.TrainState(*(placement.shardings(s) for s in specs))
    step = jax.jit(ts.make_train_step(model, loss, init['loss'], tx), donate_argnums=(0,),
                   out_shardings=(shardings, placement.replicated))
    data = jax.sharding.NamedSharding(placement.mesh, jax.sharding.PartitionSpec('data'))
    abstract = jax.tree_util.tree_map(     # the train state as shapes on their devices
        lambda sig, sharding: jax.ShapeDtypeStruct(sig.shape, sig.dtype, sharding=sharding),
        signature, shardings)
    batch_structs = tuple(jax.ShapeDtypeStruct(b.shape, b.dtype, sharding=data) for b in batch)
    start = time.time()
    memory = fastmath.backend().memory_analysis(step, abstract, batch_structs, key,
                                                np.int32(1))
    seconds = time.time() - start
    needed = memory['arguments'] + memory['outputs'] - memory['aliased'] + \
        memory['temporaries']
    params = sum(int(np.prod(s.shape)) for s in fastmath.tree_leaves(init['weights']))
    return needed, params, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--budget_gb', type=float, default=2.0)
    parser.add_argument('--layers', type=int, default=8)
    parser.add_argument('--seq_len', type=int, default=128)
    parser.add_argument('--default_scheduler', action='store_true',
                        help="XLA:CPU's default scheduler instead of the memory-optimized one")
    args = parser.parse_args()
    budget = int(args.budget_gb * 2**30)
    print(f"command: XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}' .venv/bin/python "
          f'benchmarks/sharded_memory.py --budget_gb={args.budget_gb} --layers={args.layers} '
          f'--seq_len={args.seq_len}' + (' --default_scheduler' if args.default_scheduler else ''))
    largest = {}
    with fastmath.use_backend('jax'):
        print(f'{fastmath.device_count()} devices; budget {args.budget_gb} GB per device\n')
        print('| placement | d_model | parameters | GB per device | fits | compile s |')
        print('|---|---|---|---|---|---|')
        for name, kwargs in PLACEMENTS.items():
            placement = Placement(**kwargs)
            for d_model in GRID:
                needed, params, seconds = step_bytes(d_model, args.layers, placement,
                                                     args.seq_len)
                fits = needed <= budget
                print(f'| {name} | {d_model} | {params / 1e6:,.0f}M | {needed / 2**30:.2f} | '
                      f'{"yes" if fits else "no"} | {seconds:.0f} |', flush=True)
                if not fits:
                    break
                largest[name] = (d_model, params)
    print('\n| placement | largest d_model that fits | parameters | x replicated |')
    print('|---|---|---|---|')
    base = largest.get("replicated, {'data': 8}", (0, 1))[1]
    for name, (d_model, params) in largest.items():
        print(f'| {name} | {d_model} | {params / 1e6:,.0f}M | {params / base:.1f}x |')


if __name__ == '__main__':
    main()
