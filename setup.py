"""Packages of the wheel; the metadata and dependencies are in setup.cfg.

The gin configs stay at the repository's top-level `gin/` and are installed as the package
data of `trax_sparse.gin_configs` (a folder without `__init__.py`: `gin/__init__.py` would
shadow gin-config when Python runs from the repository root), so `include 'x.gin'` works
from any directory after `pip install`.
"""
from setuptools import find_packages, setup

PACKAGES = find_packages(include=['trax_sparse', 'trax_sparse.*'])
setup(packages=PACKAGES + ['trax_sparse.gin_configs'],
      package_dir={'trax_sparse.gin_configs': 'gin'},
      package_data={'trax_sparse.gin_configs': ['*.gin', '**/*.gin']})
