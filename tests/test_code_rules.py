"""Size rules of the package (issue 13): no file in trax_sparse/ over 400 lines and no function
over 60 lines, found by an AST scan (a nested function counts on its own, and its lines also
count towards the function around it)."""
import ast
import pathlib
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'trax_sparse'
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob('*.py'))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of each function over `limit` lines, counted from
    its `def` line to its last line (docstring and comments included)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f'{prefix}{child.name}'
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((name, child.lineno, length))
                visit(child, f'{name}.')
            else:
                visit(child, prefix)

    visit(ast.parse(source), '')
    return found


def test_no_file_over_the_line_limit():
    over = [f'{p.relative_to(ROOT)}: {n} lines' for p in _sources()
            if (n := len(p.read_text(encoding='utf-8').splitlines())) > MAX_FILE_LINES]
    assert not over, f'files over {MAX_FILE_LINES} lines (split them by responsibility): {over}'


def test_no_function_over_the_line_limit():
    over = [f'{p.relative_to(ROOT)}:{line} {name} ({n} lines)' for p in _sources()
            for name, line, n in long_functions(p.read_text(encoding='utf-8'))]
    assert not over, f'functions over {MAX_FUNCTION_LINES} lines (split them): {over}'


def test_the_scan_measures_nested_functions_and_methods():
    source = textwrap.dedent("""\
        def short():
            return 1


        class Model:
            def method(self):
                a = 1

                def inner():
                    b = 2
                    return b
                return a + inner()
        """)
    assert long_functions(source, limit=2) == [('Model.method', 6, 7), ('Model.method.inner', 9, 3)]
    assert long_functions(source, limit=3) == [('Model.method', 6, 7)]
    assert long_functions(source, limit=7) == []
