"""The examples run start to finish (smoke tests, in subprocesses)."""
import json
import pathlib
import subprocess
import sys

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_layers_tour_runs_and_backends_agree():
    result = subprocess.run([sys.executable, str(ROOT / 'examples' / 'layers_tour.py')],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert 'JAX (jit) logits equal NumPy logits' in result.stdout
    diff = float(result.stdout.split('max |diff| = ')[1].split()[0])
    assert diff < 1e-5
    assert '-> Swap on [1, 2]: [1. 2.] [3. 4.]' in result.stdout


def _run_example(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / 'examples' / name), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_perplexity_parity_quick(tmp_path):
    helpers.require_shakespeare()
    result = _run_example('perplexity_parity.py', '--quick', f'--output_dir={tmp_path}')
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split('training step time\n')[1]
    for variant in ('dense', '+ sparse FF', '+ sparse FF 1-in-8', '+ sparse QKV',
                    '+ sparse FF + QKV', '+ sparse loss', 'all sparse'):
        assert f'| {variant} |' in table
    assert 'parameters (+0.00% vs dense)' in result.stdout         # params are printed
    for variant in ('dense', 'all sparse'):                     # --quick trains these two
        row = next(line for line in table.splitlines() if line.startswith(f'| {variant} |'))
        seeds = row.split(' | ')[3].split('(')[1].rstrip(')').split(' / ')
        assert len(seeds) == 2 and all(0 < float(v) < 6 for v in seeds), row   # 2 seeds, finite
        assert (tmp_path / f'{variant.replace(" ", "_")}_seed1' / 'metrics.jsonl').exists()
    assert table.count('| not run |') == 5                       # the others: configured only
    assert (tmp_path / 'validation_curves.png').stat().st_size > 1000


def test_sparse_ff_recipes_quick_trains_with_the_balance_term(tmp_path):
    """dense + one recipe (load balance on): the gap table, and the balance term logged apart
    from the loss (one 1-in-32 layer at weight 0.01: between 0.01 and 0.32)."""
    helpers.require_shakespeare()
    result = _run_example('sparse_ff_recipes.py', '--quick', '--recipes=after_quant1_balance',
                          '--seeds=0', f'--output_dir={tmp_path}')
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / 'recipes.json').read_text())
    assert row['recipe'] == 'after_quant1_balance' and row['step'] == 2
    dense = [r for r in _records(tmp_path / 'dense_seed0') if r['split'] == 'eval']
    assert abs(row['gaps']['0'] - 100 * (row['values']['0'] / dense[-1]['loss'] - 1)) < 1e-9
    assert '| after_quant1_balance | 2 |' in result.stdout
    train = [r for r in _records(tmp_path / 'sparse_ff_after_quant1_lb01_seed0')
             if r['split'] == 'train']
    assert train and all(0.01 <= r['auxiliary_loss'] <= 0.32 for r in train), train
    assert all('auxiliary_loss' not in r for r in _records(tmp_path / 'dense_seed0'))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def test_long_inputs_quick():
    result = _run_example('long_inputs.py', '--quick')
    assert result.returncode == 0, result.stderr[-3000:]
    for model in ('Transformer (dense attention)', 'Terraformer (LSH, reversible)'):
        row = next(line for line in result.stdout.splitlines() if line.startswith(f'| {model}'))
        assert row.count('|') == 8 and 'real step' in result.stdout


def test_summarize_quick_trains_decodes_and_scores(tmp_path):
    result = _run_example('summarize.py', '--quick', f'--output_dir={tmp_path}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '| tiny_arxiv | test | 2 |' in result.stdout
    assert (tmp_path / 'rouge.json').exists()


def test_summarize_without_the_dataset_says_how_to_prepare_it(tmp_path):
    result = _run_example('summarize.py', f'--data_dir={tmp_path}', timeout=120)
    assert result.returncode == 2
    assert "'scientific_papers/arxiv' is not prepared" in result.stderr
    assert 'download_and_prepare' in result.stderr and '--quick' in result.stderr
    assert not any(tmp_path.iterdir())                           # nothing was downloaded


def test_demo_quick_trains_samples_and_times(tmp_path):
    helpers.require_shakespeare()
    result = _run_example('demo.py', '--quick', f'--output_dir={tmp_path}')
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for name in ('dense', 'sparse'):
        assert f'== the {name} model continues a scene of The Tempest' in out
        row = next(line for line in out.splitlines() if line.startswith(f'| {name} | 0.'))
        ppl, numpy_ms, jax_ms = (float(v) for v in row.strip('|').split('|')[2:5])
        assert 0 < ppl < 6 and numpy_ms > 0 and jax_ms > 0, row
        assert (tmp_path / name / 'metrics.jsonl').exists()
    assert out.count('---- the model: ----') == 2
    assert 'speed-up of Sparse FF + QKV + loss over dense (jax)' in out
    assert '== demo wall time' in out


def test_readme_training_from_python_is_the_example_file():
    """README's "Training from Python" block is examples/train_from_python.py from its first
    import on (test_readme.py runs the README's blocks, so the example runs there)."""
    example = (ROOT / 'examples' / 'train_from_python.py').read_text()
    body = example[example.index('import tempfile'):]
    readme = (ROOT / 'README.md').read_text()
    section = readme.split('### Training from Python', 1)[1]
    assert section.split('```python\n', 1)[1].split('```', 1)[0] == body


def test_sharded_training_quick_equals_one_device_and_restores_elsewhere():
    result = _run_example('sharded_training.py', '--quick')       # 8 CPU devices
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split('RESULT ')[1])
    for name, row in out['rows'].items():             # both models, the FSDP mesh
        assert row['steps'] == 2 and row['max_rel_diff'] < 1e-5, name
    lm = out['rows']["ScalingTransformerLM | {'data': 2, 'model': 4}, FSDP"]
    # About 1/8 per device (replicated: 8); the LayerNorms and biases of this 1-layer model
    # split 2 ways only, so a little over 1.1.
    assert lm['weights_ratio'] <= 1.12 and lm['optimizer_ratio'] <= 1.12
    restored = out['restored']["{'data': 8}"]
    assert restored['step'] == 2 and restored['max_weight_diff'] == 0.0
    assert abs(restored['next_loss'] / out['restored']['next loss on the saving mesh'] - 1) < 1e-5
