"""Sharded training on several devices: the same losses as one device, a fraction of the bytes.

Trains the all-sparse ScalingTransformerLM (sparse FF, sparse QKV, sparse loss) and the
Terraformer (reversible LSH encoder, sparse decoder) on a device mesh, with weights and
optimizer state split by the rules of docs/sharding.md, and compares every training loss with
the one-device run. Then it saves a checkpoint on a {'data': 2, 'model': 4} FSDP mesh and
restores it onto other meshes: identical weights and next-step loss. On a machine without
accelerators it makes 8 CPU devices (XLA_FLAGS, set before jax starts).

    python examples/sharded_training.py              # 20 steps, every mesh (a few minutes)
    python examples/sharded_training.py --quick      # 2 steps, one mesh (the test suite)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

if 'jax' not in sys.modules:                       # 8 CPU devices, unless jax runs already
    # --quick (tiny graphs): XLA's expensive LLVM passes would dominate its time.
    QUICK_FLAGS = (' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
                   if '--quick' in sys.argv else '')
    os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8' + QUICK_FLAGS)

import numpy as np  # noqa: E402

from trax_sparse import fastmath, models, training  # noqa: E402

VOCAB = 16
FSDP_MESH = {'mesh_shape': {'data': 2, 'model': 4}, 'fsdp': True}
MESHES = {                                          # name -> Loop arguments
    "{'data': 8}": {'mesh_shape': {'data': 8}},
    "{'data': 2, 'model': 4}": {'mesh_shape': {'data': 2, 'model': 4}},
    "{'data': 8}, FSDP": {'mesh_shape': {'data': 8}, 'fsdp': True},
    "{'data': 2, 'model': 4}, FSDP": FSDP_MESH,
}


N_LAYERS = [2]                                     # --quick: 1


def scaling_lm(mode: str = 'train'):
    return models.ScalingTransformerLM(
        VOCAB, d_model=32, d_ff=64, n_layers=N_LAYERS[0], n_heads=4, max_len=16, ff_sparsity=4,
        attention_type='sparse_qkv', qkv_sparsity=4, loss_sparsity=2, dropout=0.0, mode=mode)


def terraformer(mode: str = 'train'):
    return models.Terraformer(
        VOCAB, d_model=16, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, n_heads=4,
        d_attention_key=8, d_attention_value=8, encoder_attention_type='lsh', chunk_len=8,
        n_buckets=2, decoder_attention_type='sparse_qkv', qkv_sparsity=4, ff_sparsity=4,
        loss_sparsity=2, dropout=0.0, max_len=32, mode=mode)


def counting(index: int, vocab: int, batch: int = 8, length: int = 8) -> np.ndarray:
    """Rows that count up from a random start (mod vocab): the next token is predictable."""
    start = np.random.default_rng([0, index]).integers(0, vocab, (batch, 1))
    return ((start + np.arange(length)) % vocab).astype(np.int32)


def lm_batches():
    for index in iter(int, 1):
        tokens = counting(index, VOCAB)
        yield tokens, tokens, np.ones(tokens.shape, np.float32)


def seq2seq_batches():
    """Encoder ids in [1, VOCAB) with padding (0) at the end of every other row."""
    for index in iter(int, 1):
        inputs = counting(index, VOCAB - 1) + 1
        inputs[::2, 6:] = 0
        targets = counting(index + 1000, VOCAB)
        yield inputs, targets, np.ones(targets.shape, np.float32)


def make_loop(make_model, output_dir: str | None = None, **placement) -> training.Loop:
    batches = seq2seq_batches() if make_model is terraformer else lm_batches()
    task = training.TrainTask(batches, optimizer=training.Adam(),
                              lr_schedule=training.constant(0.01), n_steps_per_checkpoint=1)
    return training.Loop(make_model(), task, output_dir=output_dir, random_seed=3,
                         progress_bar=False, **placement)


def train_losses(make_model, steps: int, output_dir: str | None = None,
                 **placement) -> tuple[list[float], training.Loop]:
    loop = make_loop(make_model, output_dir, **placement)
    loop.run(steps)
    return [r['loss'] for r in loop.history if r['split'] == 'train'], loop


def compare_meshes(steps: int, meshes: dict, save_dir: str) -> dict:
    """Max relative difference of the losses from one device's, and bytes per device. The
    ScalingTransformerLM run on the FSDP mesh saves its checkpoints in `save_dir`."""
    rows = {}
    for model_name, make_model in (('ScalingTransformerLM', scaling_lm),
                                   ('Terraformer', terraformer)):
        reference, _ = train_losses(make_model, steps, n_devices=1)
        for mesh_name, placement in meshes.items():
            saving = make_model is scaling_lm and placement is FSDP_MESH
            losses, loop = train_losses(make_model, steps, save_dir if saving else None,
                                        **placement)
            info = loop.run_info()['bytes']
            rows[(model_name, mesh_name)] = {
                'max_rel_diff': max(abs(a - b) / abs(b) for a, b in zip(losses, reference)),
                'steps': len(losses),
                'weights_ratio': info['weights']['per_device'] * 8 / info['weights']['total'],
                'optimizer_ratio': (info['optimizer']['per_device'] * 8
                                    / info['optimizer']['total'])}
            if saving:
                rows['saved'] = (loop, loop.weights)
    return rows


def restore_elsewhere(saved: training.Loop, weights, save_dir: str, targets: dict) -> dict:
    """Copies of the checkpoint in `save_dir` restored onto each target placement: their
    weights against `weights`, and the next step's loss against the saving loop's."""
    copies = {name: shutil.copytree(save_dir, f'{save_dir}_copy{n}')
              for n, name in enumerate(targets)}
    saved.run(1)
    results = {'next loss on the saving mesh': saved.history[-1]['loss']}
    for name, placement in targets.items():
        loop = make_loop(scaling_lm, copies[name], **placement)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(
            fastmath.tree_leaves(loop.weights), fastmath.tree_leaves(weights)))
        loop.run(1)
        results[name] = {'step': loop.step - 1, 'max_weight_diff': diff,
                         'next_loss': loop.history[-1]['loss']}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--quick', action='store_true',
                        help="2 steps, 1 layer, the {'data': 2, 'model': 4} FSDP mesh only")
    args = parser.parse_args()
    steps = 2 if args.quick else args.steps
    N_LAYERS[0] = 1 if args.quick else 2
    meshes = {k: v for k, v in MESHES.items() if k.endswith('4}, FSDP')} if args.quick \
        else MESHES
    restore_targets = {"{'data': 8}": {'mesh_shape': {'data': 8}}}
    if not args.quick:
        restore_targets['1 device'] = {'n_devices': 1}
    directory = tempfile.mkdtemp()
    with fastmath.use_backend('jax'):
        print(f'{fastmath.device_count()} devices, {steps} steps, Adam 0.01\n')
        rows = compare_meshes(steps, meshes, os.path.join(directory, 'saved'))
        saved, weights = rows.pop('saved')
        restored = restore_elsewhere(saved, weights, os.path.join(directory, 'saved'),
                                     restore_targets)
    shutil.rmtree(directory)
    print('| model | mesh | max rel. loss diff vs 1 device | weights per device x 8 / total '
          '| optimizer per device x 8 / total |')
    print('|---|---|---|---|---|')
    for (model_name, mesh_name), row in rows.items():
        print(f"| {model_name} | {mesh_name} | {row['max_rel_diff']:.1e} | "
              f"{row['weights_ratio']:.3f} | {row['optimizer_ratio']:.3f} |")
    print(f"\nsaved on {{'data': 2, 'model': 4}}, FSDP, at step {steps}; next loss "
          f"{restored['next loss on the saving mesh']:.6f}")
    for name in restore_targets:
        r = restored[name]
        print(f"restored on {name}: step {r['step']}, max |weight diff| {r['max_weight_diff']}, "
              f"next loss {r['next_loss']:.6f}")
    print('RESULT ' + json.dumps({'rows': {f'{m} | {k}': v for (m, k), v in rows.items()},
                                  'restored': restored}))


if __name__ == '__main__':
    main()
