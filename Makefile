# Two commands do all set-up: `make demo` and `make test` (see README.md).
# The corpus is prepared in the per-user data dir (~/.local/share/trax_sparse, or
# $TRAX_SPARSE_DATA_DIR), created if missing; `make data` is idempotent (about 1 s when done).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo data venv clean

venv: $(STAMP)

$(STAMP): setup.py setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m trax_sparse.data.prepare

# The tests and every docstring example of the package (--doctest-modules).
test: data
	$(PY) -m pytest -q -n 2 tests trax_sparse --doctest-modules

demo: data
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) *.egg-info build dist
