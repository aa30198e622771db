"""The trainer binary trains a tiny ScalingTransformerLM on Shakespeare and the validation
loss drops clearly (issue acceptance: 'within a couple of minutes on CPU')."""
import math
import os
import pathlib
import subprocess
import sys

from tests import helpers
from trax_sparse import configurables
from trax_sparse.training import read_metrics

GIN = pathlib.Path(configurables.GIN_DIR) / 'scaling_transformer_lm_tiny.gin'


def test_trainer_lowers_shakespeare_validation_loss(tmp_path):
    helpers.require_shakespeare()
    out = tmp_path / 'run'
    command = [sys.executable, '-m', 'trax_sparse.trainer', f'--config_file={GIN}',
               '--config=seq_len = 64', '--config=ScalingTransformerLM.n_layers = 1',
               '--config=train.steps = 60', '--config=train.eval_every = 20',
               '--config=train.checkpoint_every = 20', '--config=train.eval_steps = 4',
               '--config=multifactor.warmup_steps = 20', '--noplot', f'--output_dir={out}']
    # Compiling dominates at this size: XLA's fast settings (30 -> 22 s CPU, the same losses).
    env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') +
               ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [r for r in read_metrics(str(out)) if r['split'] == 'eval']
    assert [r['step'] for r in evals] == [20, 40, 60]
    first, last = evals[0]['loss'], evals[-1]['loss']
    uniform = math.log(258)                           # 5.55 nats/byte: an untrained model
    assert last < first - 0.3 and last < uniform - 2.0, (first, last)
    assert (out / 'config.gin').read_text().count('ScalingTransformerLM.ff_sparsity = 16') == 1
