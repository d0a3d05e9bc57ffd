"""Packaging that pyproject.toml alone cannot say: the top-level ``conf/`` is the package ``asyncsgd.conf``.

Everything else (metadata, dependencies, entry points, package data) is in
pyproject.toml. setuptools' package discovery in pyproject.toml cannot map a
subpackage to a folder outside its parent, so the package list is built here:
every package under ``asyncsgd/``, plus ``conf/`` as ``asyncsgd.conf`` and each
config group folder as its subpackage (listed, so setuptools does not warn about
importable folders it was not told of). A wheel then carries the configs at
``asyncsgd/conf/``, and an editable install points ``asyncsgd.conf`` at this
checkout's ``conf/``.
"""
from pathlib import Path

from setuptools import find_packages, setup

groups = sorted(".".join(d.relative_to("conf").parts) for d in Path("conf").rglob("*")
                if d.is_dir() and d.name != "__pycache__")

setup(
    packages=[*find_packages(include=["asyncsgd", "asyncsgd.*"]), "asyncsgd.conf",
              *(f"asyncsgd.conf.{g}" for g in groups)],
    package_dir={"asyncsgd.conf": "conf"},
)
