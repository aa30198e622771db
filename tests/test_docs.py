"""Every reference to a document (a `*.md` name in code, configs and docs) resolves to a file in
the repository: the code cites docs/, never documents that only exist elsewhere."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob('trax_sparse/**/*.py'), *ROOT.glob('gin/**/*.gin'),
                  *ROOT.glob('benchmarks/*.py'), *ROOT.glob('examples/*.py'),
                  *ROOT.glob('tests/**/*.py'), *ROOT.glob('docs/*.md'),
                  *ROOT.glob('benchmarks/*.md'), ROOT / 'README.md'])
SOURCES = [p for p in SOURCES if p != pathlib.Path(__file__).resolve()]   # its own examples
MD_NAME = re.compile(r'(?<![\w/.-])((?:\.\./)*[\w./-]*[\w-]+\.md)\b')


def _references(path: pathlib.Path) -> list[str]:
    return [m.group(1) for m in MD_NAME.finditer(path.read_text(encoding='utf-8'))]


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_document_references_resolve(path):
    missing = []
    for name in _references(path):
        candidates = [ROOT / name, path.parent / name, ROOT / 'docs' / name]
        resolved = [c.resolve() for c in candidates if c.is_file()]
        if not resolved or not all(ROOT in r.parents for r in resolved):
            missing.append(name)
    assert not missing, f'{path.relative_to(ROOT)} cites documents not in the repo: {missing}'


def test_the_scan_finds_references():
    assert 'docs/predict_mode.md' in _references(ROOT / 'trax_sparse/layers/attention.py')
    text = 'see ../shared/docs/DESIGN.md §4 and OTHER.md, not foo.mdx'
    assert MD_NAME.findall(text) == ['../shared/docs/DESIGN.md', 'OTHER.md']
