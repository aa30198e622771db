"""The examples run start to finish (smoke tests, in subprocesses)."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_layers_tour_runs_and_backends_agree():
    result = subprocess.run([sys.executable, str(ROOT / 'examples' / 'layers_tour.py')],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert 'JAX (jit) logits equal NumPy logits' in result.stdout
    diff = float(result.stdout.split('max |diff| = ')[1].split()[0])
    assert diff < 1e-5
    assert '-> Swap on [1, 2]: [1. 2.] [3. 4.]' in result.stdout
