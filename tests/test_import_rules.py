"""Import rules of docs/architecture.md, enforced by an AST scan of every module.

- jax only in trax_sparse/fastmath/jax_backend/; gin only at the edges
  (configurables.py, trainer.py, decode.py); never tensorflow directly.
- Lower levels never import higher: fastmath/shapes -> layers -> models;
  data, training and decoding never import models (they take a model).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'trax_sparse'
# Which trax_sparse subpackages each part of the package may import.
ALLOWED = {
    'shapes': set(),
    'io_utils': set(),   # file helpers (sha256, atomic writes) shared by data and training
    'fastmath': {'fastmath', 'shapes'},
    'sharding': {'fastmath'},   # logical weight axes and their mesh rules (pure Python)
    'precision': {'fastmath'},  # the compute dtypes and the casts of the precision policy
    'layers': {'fastmath', 'shapes', 'sharding', 'precision', 'layers'},
    'models': {'fastmath', 'shapes', 'sharding', 'precision', 'layers', 'models'},
    'data': {'fastmath', 'shapes', 'io_utils', 'data'},
    'training': {'fastmath', 'shapes', 'io_utils', 'sharding', 'precision', 'layers', 'data',
                 'training'},
    'decoding': {'fastmath', 'shapes', 'sharding', 'precision', 'layers', 'data', 'decoding'},
    'testing': {'fastmath', 'shapes', 'layers'},   # test oracles (references), not API
    '__init__': {'fastmath', 'shapes', 'sharding', 'precision', 'layers', 'models', 'data',
                 'training', 'decoding'},
}
EDGES = {'configurables', 'trainer', 'decode'}   # binaries and gin registration: anything
JAX_MODULES = ('fastmath/jax_backend/__init__.py', 'fastmath/jax_backend/devices.py')
GIN_MODULES = {'configurables.py', 'trainer.py', 'decode.py'}


def _modules():
    return sorted(p for p in ROOT.rglob('*.py'))


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == 'trax_sparse':
                for alias in node.names:
                    yield f'trax_sparse.{alias.name}'


def _part(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix('.py') if len(rel.parts) > 1 or rel.name != '__init__.py' \
        else '__init__'


@pytest.mark.parametrize('path', _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_follows_import_rules(path):
    rel = str(path.relative_to(ROOT))
    part = _part(path)
    for name in _imports(path):
        top = name.split('.')[0]
        if top == 'jax' or top == 'jaxlib':
            assert rel in JAX_MODULES, f'{rel} imports {name}: jax only in {JAX_MODULES}'
        if top == 'gin':
            assert rel in GIN_MODULES, f'{rel} imports gin: only {sorted(GIN_MODULES)} may'
        assert top != 'tensorflow', f'{rel} imports tensorflow'
        if top == 'trax_sparse' and part not in EDGES:
            parts = name.split('.')
            if len(parts) > 1:
                assert parts[1] in ALLOWED[part], (
                    f'{rel} (level {part!r}) imports {name}: allowed {sorted(ALLOWED[part])}')


def test_scan_sees_the_package():
    assert len(_modules()) > 10


# The predict contract: caches are written with fastmath.update_cache (in place on NumPy,
# donated on JAX), reads depend on whether a position is concrete; so no layer module asks
# which backend is live. Only the Layer base (custom gradients on JAX) may.
BACKEND_QUERIES = {'backend_name', 'is_jax'}
LAYER_MODULES = sorted(p for p in (ROOT / 'layers').rglob('*.py') if p.name != 'base.py')


@pytest.mark.parametrize('path', LAYER_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_modules_do_not_branch_on_the_backend(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    asked = {node.attr for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr in BACKEND_QUERIES}
    asked |= {node.id for node in ast.walk(tree)
              if isinstance(node, ast.Name) and node.id in BACKEND_QUERIES}
    assert not asked, (f'{path.relative_to(ROOT)} asks the backend ({sorted(asked)}): use '
                       f'fastmath.update_cache / fastmath.is_concrete instead')
