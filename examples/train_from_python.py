"""Training from Python: a model, a custom data iterator, Loop, TrainTask and EvalTask.

    python examples/train_from_python.py

The README shows this file as its "Training from Python" example (a test keeps them equal).
"""
import tempfile

import numpy as np

from trax_sparse import models, training


def copy_batches(batch_size=8, length=16, vocab_size=32, seed=0):
    """A custom data iterator: (inputs, targets, weights) batches whose second half repeats
    the first, so the model can learn to copy."""
    rng = np.random.default_rng(seed)
    while True:
        half = rng.integers(1, vocab_size, (batch_size, length // 2))
        tokens = np.concatenate([half, half], axis=1).astype(np.int32)
        weights = np.zeros(tokens.shape, np.float32)
        weights[:, length // 2:] = 1.0                 # score only the copied half
        yield tokens, tokens, weights


model = models.TransformerLM(32, d_model=32, d_ff=64, n_layers=1, n_heads=2, max_len=16)
train_task = training.TrainTask(copy_batches(), optimizer=training.Adam(),
                                lr_schedule=training.constant(0.01),
                                n_steps_per_checkpoint=10)
eval_task = training.EvalTask(copy_batches(seed=1), n_eval_batches=2)
output_dir = tempfile.mkdtemp()                        # checkpoints and metrics.jsonl
loop = training.Loop(model, train_task, eval_tasks=[eval_task], output_dir=output_dir)
loop.run(10)                                           # rerun with the same output_dir: resumes
print(f'step {loop.step}: eval loss {loop.history[-1]["loss"]:.3f}, saved in {output_dir}')
