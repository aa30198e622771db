"""The training package reads in parts: small files and functions, one directory check per run."""
import ast
import pathlib

from trax_sparse import io_utils
from trax_sparse import training
from tests.training import tiny

PACKAGE = pathlib.Path(training.__file__).parent


def test_files_and_functions_are_small():
    for path in sorted(PACKAGE.glob('*.py')):
        text = path.read_text()
        assert text.count('\n') <= 400, f'{path.name} has {text.count(chr(10))} lines'
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f'{path.name}: {node.name} has {length} lines'


def test_the_loop_is_built_from_parts_that_read_alone():
    for part in ('train_step', 'checkpointer', 'reporter', 'evaluator'):
        assert (PACKAGE / f'{part}.py').exists(), part
    tree = ast.parse((PACKAGE / 'train_step.py').read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    # The step builder is pure: no files, no other training part (checkpoints, metrics).
    assert not {m for m in imported if m in ('os', 'io', 'json') or 'training' in m}, imported


def test_train_checks_the_output_dir_once(tmp_path, monkeypatch):
    checked = []
    real = io_utils.check_writable_dir

    def spy(path, what, need_bytes=0):
        checked.append(what)
        return real(path, what, need_bytes)
    monkeypatch.setattr(io_utils, 'check_writable_dir', spy)
    training.train(str(tmp_path), model=tiny.TinyLM, inputs=tiny.CountingStream, steps=1,
                   optimizer=training.Adam, plot=False,
                   lr_schedule=lambda: training.constant(tiny.LEARNING_RATE))
    assert checked.count('output_dir') == 1, checked
    assert checked.count('checkpoint dir') == 2, checked  # writable, then room for one
