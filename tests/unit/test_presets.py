"""Experiment presets, strategy variants and the SLURM launcher preset compose into the jobs they promise.

Presets name options that other work adds (strategies, models, datasets). A preset
is skipped only when it names an option this checkout lacks, and the skip reason
lists which: computed from the config files, never a hard-coded list.
"""
from __future__ import annotations

import importlib.util
import itertools
import math

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from asyncsgd.config import ConfigError, register_configs
from asyncsgd.presets import missing_options, referenced_options, runnable_variants, swept_values
from asyncsgd.validate import compose_jobs, expand_sweep, options

VARIANTS = {  # variant -> (strategy name, the settings it fixes)
    "sync": ("sync", {}),
    "layerwise_forward": ("layerwise", {"wait_at": "forward", "priority": False}),
    "layerwise_step": ("layerwise", {"wait_at": "step"}),
    "layerwise_priority": ("layerwise", {"wait_at": "forward", "priority": True}),
    "delayed_k1": ("delayed", {"k": 1, "compensation": "none"}),
    "delayed_k2": ("delayed", {"k": 2, "compensation": "none"}),
    "delayed_k4": ("delayed", {"k": 4, "compensation": "none"}),
    **{f"delayed_k{k}_{rule}": ("delayed", {"k": k, "compensation": rule})
       for k in (1, 2, 4) for rule in ("momentum", "lr", "dc", "predict") if (k, rule) != (1, "lr")},  # lr: no-op at k=1
    **{f"delayed_k{k}_spike_predict": ("delayed", {"k": k, "compensation": "spike+predict"}) for k in (1, 2, 4)},
    "ddp": ("ddp", {}),
}
STRATEGY_VARIANTS = ["sync", "layerwise_forward", "layerwise_step", "delayed_k1", "delayed_k2", "ddp"]

# What each preset sweeps, as (key, values); the jobs are their product in this order.
SWEEPS = {
    "strategies": [("+variant", STRATEGY_VARIANTS), ("world_size", [1, 2])],
    "scaling": [("+variant", ["sync", "layerwise_forward", "delayed_k1", "ddp"]), ("world_size", [1, 2, 4])],
    "small_batch": [("+variant", STRATEGY_VARIANTS), ("train.batch_size", [1, 4, 16, 64])],
    "architectures": [("model", ["mlp", "lenet", "cnn", "resnet18", "alexnet"]),
                      ("+variant", ["sync", "layerwise_forward", "delayed_k1", "ddp"])],
    "paper": [("model", ["alexnet", "googlenet"]), ("+variant", ["sync", "layerwise_forward", "delayed_k1"])],
    "time_to_accuracy": [("seed", [0, 1, 2]), ("model", ["lenet", "cnn"]),
                         ("+variant", ["sync", "layerwise_priority", "ddp",
                                       *[v for k in (1, 2, 4) for v in VARIANTS if v.startswith(f"delayed_k{k}")]])],
}
# Composing a job takes a few tenths of a second: where a preset sweeps a hundred jobs, the
# compose tests take these values from the command line (which replaces the preset's sweep).
NARROW = {"time_to_accuracy": {"seed": [1], "model": ["cnn"]}}


def _narrowed(name: str):
    """The preset's sweep with NARROW's values, and the overrides that ask for them."""
    narrow = NARROW.get(name, {})
    return ([(k, narrow.get(k, values)) for k, values in SWEEPS[name]],
            [f"{k}={','.join(map(str, v))}" for k, v in narrow.items()])


def skip_unless_available(group: str, option: str) -> None:
    missing = missing_options(group, option)
    if missing:
        pytest.skip(f"{group}={option} needs {', '.join(missing)}, not among this checkout's config options")


def _variant_of(strategy) -> str:
    return next(v for v, (name, fixed) in VARIANTS.items()
                if strategy.name == name and all(getattr(strategy, k) == val for k, val in fixed.items()))


def _job_value(cfg, key: str):
    if key == "+variant":
        return _variant_of(cfg.strategy)
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "name", obj)


def test_every_preset_is_listed():
    assert options("experiment") == sorted(SWEEPS)
    assert options("variant") == sorted(VARIANTS)


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_preset_sweeps_what_it_promises(name):
    assert [(k, swept_values(name, k)) for k, _ in SWEEPS[name]] == [(k, [str(v) for v in vs]) for k, vs in SWEEPS[name]]


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_preset_composes_to_its_jobs(name):
    skip_unless_available("experiment", name)
    sweep, narrow = _narrowed(name)
    configs = compose_jobs([f"+experiment={name}", *narrow], multirun=True)
    expected = list(itertools.product(*[values for _, values in sweep]))
    assert [tuple(_job_value(c, k) for k, _ in sweep) for c in configs] == expected


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_preset_composes_with_the_options_that_exist_today(name):
    """The part of each preset this checkout can compose: its available models and variants."""
    narrowed, narrow = _narrowed(name)
    sweep = dict(narrowed)
    variants = runnable_variants(name)
    models = [m for m in sweep.get("model", []) if m in options("model")]
    missing_fixed = [m for m in missing_options("experiment", name)
                     if not m.startswith(("strategy=", "variant=", "model="))]
    if not variants or "model" in sweep and not models or missing_fixed:
        pytest.skip(f"+experiment={name} needs {', '.join(missing_options('experiment', name))}")
    overrides = [f"+experiment={name}", f"+variant={','.join(variants)}", *[o for o in narrow if o[:6] != "model="]]
    if "model" in sweep:
        overrides.append(f"model={','.join(models)}")
    configs = compose_jobs(overrides, multirun=True)
    sizes = [len(models) if k == "model" else len(variants) if k == "+variant" else len(v) for k, v in narrowed]
    assert len(configs) == math.prod(sizes)
    assert {c.backend.name for c in configs} == {"mpi" if name == "paper" else "gloo"}


def test_strategies_preset_at_two_workers_is_the_demo():
    variants = runnable_variants("strategies")
    assert variants[0] == "sync"  # the baseline exists in every checkout
    configs = compose_jobs(["+experiment=strategies", f"+variant={','.join(variants)}", "world_size=2"], multirun=True)
    assert [(c.strategy.name, c.world_size, c.dataset.name, c.backend.name, c.train.threads) for c in configs] == [
        (VARIANTS[v][0], 2, "digits", "gloo", 1) for v in variants]


def test_small_batch_and_scaling_change_only_their_values():
    (cfg,) = compose_jobs(["+experiment=small_batch", "+variant=sync", "train.batch_size=4"], multirun=True)
    assert (cfg.world_size, cfg.train.epochs, cfg.train.batch_size, cfg.model.name) == (2, 2, 4, "mlp")
    (cfg,) = compose_jobs(["+experiment=scaling", "+variant=sync", "world_size=4"], multirun=True)
    assert (cfg.dataset.name, cfg.model.name, cfg.train.batch_size, cfg.train.threads) == ("synthetic", "cnn", 32, 1)
    assert cfg.train.momentum == 0.9  # untouched values come from config.yaml


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_fixes_its_strategy(variant):
    skip_unless_available("variant", variant)
    (cfg,) = compose_jobs([f"+variant={variant}"], multirun=False)
    name, fixed = VARIANTS[variant]
    assert cfg.strategy.name == name
    assert {k: getattr(cfg.strategy, k) for k in fixed} == fixed


def test_missing_options_are_computed_from_the_files():
    reached = referenced_options("experiment", "strategies")
    assert ("backend", "gloo") in reached and ("variant", "delayed_k1") in reached and ("strategy", "delayed") in reached
    expected = [f"strategy={s}" for s in ("layerwise", "delayed", "ddp") if s not in options("strategy")]
    assert missing_options("experiment", "strategies") == expected
    assert missing_options("experiment", "nope") == ["experiment=nope"]


def test_command_line_replaces_a_preset_sweep():
    assert expand_sweep(["world_size=2"], ["+variant=sync,ddp", "world_size=1,2"]) == [
        ["+variant=sync", "world_size=2"], ["+variant=ddp", "world_size=2"]]


# ---------------------------------------------------------------- SLURM
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install 'asyncsgd[slurm]'; ./scripts/setup installs it)",
)


@needs_submitit
def test_slurm_preset_starts_world_size_tasks_per_run():
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("asyncsgd.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm", "launcher=external", "world_size=4",
                                           "hydra.launcher.partition=cpu"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    # the plugin's launcher plus requeue-with-resume and failures listed (hydra_plugins/asyncsgd_launcher)
    assert launcher._target_ == "hydra_plugins.asyncsgd_launcher.submitit_slurm.SubmititSlurmLauncher"
    assert launcher.setup == ["export SLURM_MPI_TYPE=pmi2"]  # srun --mpi=pmi2, what the mpich wheel speaks
    assert (launcher.nodes, launcher.tasks_per_node, launcher.cpus_per_task, launcher.partition) == (1, 4, 1, "cpu")
    assert launcher.submitit_folder.endswith("/.submitit/%j")
    (job,) = compose_jobs(["hydra/launcher=submitit_slurm", "launcher=external", "world_size=4"], multirun=True)
    assert (job.launcher.name, job.world_size) == ("external", 4)


@needs_submitit
@pytest.mark.parametrize("overrides,message", [
    (["world_size=4"], "hydra/launcher=submitit_slurm starts each run's workers with srun: add launcher=external"),
    (["launcher=external", "world_size=2,4"],
     "hydra.launcher.nodes x hydra.launcher.tasks_per_node = 2 tasks, but the jobs ask for world_size=2,4"),
    (["launcher=external", "world_size=4", "hydra.launcher.tasks_per_node=2"], "= 2 tasks, but the jobs ask for world_size=4"),
])
def test_slurm_preset_refuses_what_srun_cannot_start(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compose_jobs(["hydra/launcher=submitit_slurm", *overrides], multirun=True)


@needs_submitit
def test_slurm_preset_on_two_nodes():
    (job,) = compose_jobs(["hydra/launcher=submitit_slurm", "launcher=external", "world_size=8",
                           "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4"], multirun=True)
    assert job.world_size == 8
