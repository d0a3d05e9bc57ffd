"""The configs live in the top-level conf/ and an installed asyncsgd finds them from any directory.

Two installs: the editable one the tests run in (``./scripts/setup``: the
package asyncsgd.conf is this checkout's conf/), and a regular one, built here
as a wheel from a copy of the sources and installed with pip into a folder of
its own. In each, from an empty directory: Hydra composes a preset, the
validation lists a group's options, and a user's own experiment file is picked
up through ``hydra.searchpath``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "setup.py", "README.md", "asyncsgd", "conf"]  # what a wheel is built from
MY_STUDY = """\
# @package _global_
defaults:
  - override /strategy: delayed
strategy:
  k: 3
"""

pytestmark = pytest.mark.slow


def _run(cmd, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _where(python: str, cwd: Path, env: dict) -> tuple:
    """(the asyncsgd package's folder, the folder its configs are read from) as that interpreter sees them."""
    code = "import asyncsgd, asyncsgd.validate as v; print(asyncsgd.__file__); print(v.config_files())"
    out = _run([python, "-c", code], cwd, env)
    assert out.returncode == 0, out.stderr
    package, configs = out.stdout.split()
    return Path(package).parent, Path(configs)


def _check_finds_the_configs(run_cmd, cwd: Path, env: dict) -> None:
    """``run_cmd`` is how this install starts asyncsgd-run; ``cwd`` holds nothing of the repository."""
    preset = _run([*run_cmd, "--cfg", "job", "+experiment=strategies"], cwd, env)
    assert preset.returncode == 0, preset.stderr
    cfg = OmegaConf.create(preset.stdout)
    assert (cfg.backend.name, cfg.train.threads, cfg.dataset.name) == ("gloo", 1, "digits")

    bad = _run([*run_cmd, "dataset=nope"], cwd, env)  # the validation lists the group's files
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("choose one of cifar10, cifar100, digits, fashion_mnist, imagenet, mnist, synthetic")

    (cwd / "my_conf" / "experiment").mkdir(parents=True)
    (cwd / "my_conf" / "experiment" / "my_study.yaml").write_text(MY_STUDY)
    mine = ["hydra.searchpath=[file://my_conf]", "+experiment=my_study"]
    composed = _run([*run_cmd, "--cfg", "job", *mine], cwd, env)
    assert composed.returncode == 0, composed.stderr
    strategy = OmegaConf.create(composed.stdout).strategy
    assert (strategy.name, strategy.k, strategy.drain) == ("delayed", 3, True)  # the user's k over the group's file
    # The validation composes with the user's file too: it gets as far as the value check.
    checked = _run([*run_cmd, *mine, "world_size=0"], cwd, env)
    assert checked.returncode == 2 and checked.stderr.strip() == "asyncsgd-run: error: world_size=0 must be >= 1"


def test_editable_install_reads_this_checkouts_conf(tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    package, configs = _where(sys.executable, tmp_path, env)
    if package != REPO / "asyncsgd":
        pytest.skip(f"asyncsgd is imported from {package}, not installed editable from this checkout")
    assert configs == REPO / "conf"  # an edit to conf/ takes effect without reinstalling
    _check_finds_the_configs([sys.executable, "-m", "asyncsgd.cli"], tmp_path, env)


def test_a_wheel_carries_the_configs(tmp_path):
    src, site, cwd = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    # No build isolation and no index: setuptools comes from this environment, nothing is downloaded.
    built = _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                  "--target", str(site), str(src)], tmp_path, dict(os.environ))
    assert built.returncode == 0, built.stderr
    assert "absent from the `packages` configuration" not in built.stderr  # every folder it packs is listed
    profiles = site / "asyncsgd" / "projection" / "profiles"  # asyncsgd-project's paper-scale profiles
    assert sorted(p.name for p in profiles.glob("*.json")) == \
        sorted(p.name for p in (REPO / "asyncsgd" / "projection" / "profiles").glob("*.json"))
    installed = site / "asyncsgd" / "conf"
    assert sorted(p.relative_to(installed) for p in installed.rglob("*.yaml")) == \
        sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))

    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install in this environment
    package, configs = _where(sys.executable, cwd, env)
    assert (package, configs) == (site / "asyncsgd", installed)
    _check_finds_the_configs([str(site / "bin" / "asyncsgd-run")], cwd, env)

    # What an old checkout can leave behind: the folder, holding only bytecode, is an empty
    # namespace package in place of the configs. One line and exit 2, not Hydra's traceback.
    shutil.rmtree(installed)
    (installed / "__pycache__").mkdir(parents=True)
    stale = _run([str(site / "bin" / "asyncsgd-run")], cwd, env)
    assert stale.returncode == 2 and len(stale.stderr.splitlines()) == 1, stale.stderr
    assert "have no config.yaml: reinstall asyncsgd" in stale.stderr
