"""Packaging that pyproject.toml alone cannot say: the top-level ``conf/`` is the package ``asyncsgd.conf``.

Everything else (metadata, dependencies, entry points, package data) is in
pyproject.toml. setuptools' package discovery in pyproject.toml cannot map a
subpackage to a folder outside its parent, so the package list is built here:
every package under ``asyncsgd/``, plus ``conf/`` as ``asyncsgd.conf`` and each
config group folder as its subpackage, plus our Hydra launcher under the namespace
package ``hydra_plugins/`` (Hydra finds launchers there) (listed, so setuptools does not warn about
importable folders it was not told of). A wheel then carries the configs at
``asyncsgd/conf/``, and an editable install points ``asyncsgd.conf`` at this
checkout's ``conf/``.
"""
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

groups = sorted(".".join(d.relative_to("conf").parts) for d in Path("conf").rglob("*")
                if d.is_dir() and d.name != "__pycache__")

setup(
    # asyncsgd.projection.profiles holds only data (the paper-scale profiles, JSON); it is
    # listed as a package so that setuptools packs it without warning of an unlisted folder.
    packages=[*find_packages(include=["asyncsgd", "asyncsgd.*"]), "asyncsgd.projection.profiles",
              "asyncsgd.conf",
              *(f"asyncsgd.conf.{g}" for g in groups),
              *find_namespace_packages(include=["hydra_plugins*"])],
    package_dir={"asyncsgd.conf": "conf"},
)
