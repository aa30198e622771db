"""The README's first Python snippet runs as written and, under the NumPy backend,
initializes and computes on NumPy arrays (not JAX arrays)."""
import pathlib
import re

import numpy as np

from trax_sparse import fastmath

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_numpy_snippet_initializes_and_computes_on_numpy():
    snippet = re.search(r'```python\n(.*?)```', README.read_text(), re.S).group(1)
    namespace = {}
    exec(compile(snippet, str(README), 'exec'), namespace)          # noqa: S102
    leaves = fastmath.tree_leaves(namespace['weights']) + [namespace['y']]
    assert leaves and all(type(leaf) is np.ndarray for leaf in leaves), \
        [type(leaf) for leaf in leaves]
    assert namespace['y'].shape == (2, 4)


def test_every_python_snippet_runs_in_order():
    """The snippets share one namespace, as a reader types them one after the other."""
    namespace = {}
    for snippet in re.findall(r'```python\n(.*?)```', README.read_text(), re.S):
        exec(compile(snippet, str(README), 'exec'), namespace)      # noqa: S102
    assert namespace['logits'].shape == (4, 258)
