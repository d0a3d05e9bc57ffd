"""Packaging that pyproject.toml alone cannot say: the top-level ``conf/`` is the package ``asyncsgd.conf``.

Everything else (metadata, dependencies, entry points, package data) is in
pyproject.toml. setuptools' package discovery in pyproject.toml cannot map a
subpackage to a folder outside its parent, so the package list is built here:
every package under ``asyncsgd/``, plus ``conf/`` as ``asyncsgd.conf``. A
wheel then carries the configs at ``asyncsgd/conf/``, and an editable install
points ``asyncsgd.conf`` at this checkout's ``conf/``.
"""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["asyncsgd", "asyncsgd.*"]), "asyncsgd.conf"],
    package_dir={"asyncsgd.conf": "conf"},
)
