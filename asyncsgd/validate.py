"""Check a command line before any worker starts: compose every job of the
(multi)run, build the typed config, and check what the machine must provide.
Every problem becomes one :class:`ConfigError` line naming the key to fix.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from typing import List, Optional

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import (GROUPS, CheckpointConfig, ClusterConfig, Config, ConfigError, FaultConfig, ResumeConfig,
                     TrainConfig, register_configs)
from .launch.environment import find_executable

# The repository's top-level conf/, installed as this package (setup.py maps it).
CONFIG_MODULE = "asyncsgd.conf"


def config_files():
    """The installed configs as an importlib.resources Traversable; ConfigError if they cannot be found.

    A checkout from before the configs moved to conf/ may keep an ``asyncsgd/conf/``
    folder holding only ``__pycache__`` (git leaves ignored files behind), which
    Python then imports as an empty namespace package in place of the real one.
    """
    import importlib.resources

    try:
        files = importlib.resources.files(CONFIG_MODULE)
        found = files.joinpath("config.yaml").is_file()
    except (ImportError, TypeError):
        files, found = None, False
    if not found:
        where = f" at {files}" if files is not None else ""
        raise ConfigError(
            f"the configs (package {CONFIG_MODULE}{where}) have no config.yaml: reinstall asyncsgd "
            "(./scripts/setup, or pip install -e .), and delete an asyncsgd/conf/ folder left from an older checkout"
        )
    return files


def options(group: str) -> List[str]:
    """The public choices of a config group (schemas named base_* are internal)."""
    files = config_files().joinpath(group)
    found = sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml")) if files.is_dir() else []
    return found or sorted(GROUPS.get(group, {}))


def explain(exc: BaseException, overrides: List[str]) -> str:
    """One line a user can act on, from whatever Hydra or OmegaConf raised."""
    if isinstance(exc, ConfigError):
        return str(exc)
    text = str(exc)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if isinstance(exc, MissingConfigException) and missing:
        group, choice = missing.groups()
        return f"{group}={choice} is not an option; choose one of {', '.join(options(group))}"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    cause_text = str(cause)
    key = re.search(r"full_key: (\S+)", cause_text)
    not_in = re.search(r"Key '([^']+)' not in '([^']+)'", cause_text)
    if not_in:
        full = key.group(1) if key else not_in.group(1)
        parent = full.rsplit(".", 1)[0] if "." in full else ""
        valid = _valid_keys(parent)
        where = f" under {parent}" if parent else ""
        hint = f"; valid keys{where}: {', '.join(valid)}" if valid else ""
        return f"{full} is not a config key{hint}"
    convert = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", cause_text)
    if convert and key:
        return f"{key.group(1)}={convert.group(1)!r} is not a valid {convert.group(2).lower()}"
    not_bool = re.search(r"Value '([^']*)' is not a valid bool", cause_text)
    if not_bool and key:
        return f"{key.group(1)}={not_bool.group(1)!r} is not a valid bool (true or false)"
    if "Ambiguous value for argument" in text:
        arg = re.search(r"argument '([^']+)'", text)
        return f"{arg.group(1) if arg else 'a value'} lists several values: add -m (--multirun) to sweep over them"
    first = next((line.strip() for line in cause_text.splitlines() if line.strip()), type(cause).__name__)
    return first


def _valid_keys(parent: str) -> List[str]:
    """Keys allowed under ``parent`` ("" = top level), across every choice of a group."""
    if not parent:
        return sorted(f.name for f in dataclasses.fields(Config))
    if parent in GROUPS:
        return sorted({f.name for schema in GROUPS[parent].values() for f in dataclasses.fields(schema)})
    section = {"train": TrainConfig, "fault": FaultConfig, "cluster": ClusterConfig, "checkpoint": CheckpointConfig,
               "resume": ResumeConfig}.get(parent)
    return sorted(f.name for f in dataclasses.fields(section)) if section else []


def expand_sweep(overrides: List[str], params: Optional[List[str]] = None) -> List[List[str]]:
    """The override list of each job a multirun would start (Hydra's basic sweeper order).

    ``params`` are the config's ``hydra.sweeper.params`` as ``key=values`` (what an
    experiment preset sweeps); like Hydra, they come first and the command line
    replaces any of them it names again.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides([*(params or []), *overrides])
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch] or [[]]


def sweeper_params(hydra_cfg: DictConfig) -> List[str]:
    """``hydra.sweeper.params`` as the ``key=values`` lines Hydra's basic sweeper builds from it."""
    params = OmegaConf.select(hydra_cfg, "sweeper.params")
    return [f"{key}={value}" for key, value in (params or {}).items()]


def _compose_master(overrides: List[str]) -> DictConfig:
    """The config a multirun starts from: Hydra composes the command line without its
    sweeps, and reads the sweeper and launcher settings (a preset's sweeps) from that."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return compose("config", overrides=[o.input_line for o in parsed if not o.is_sweep_override()],
                   return_hydra_config=True)


def compose_jobs(overrides: List[str], multirun: bool) -> List[Config]:
    """Compose and type-check every job (a preset's sweep included); raises ConfigError with one line."""
    register_configs()
    config_files()
    _check_launcher_plugin(overrides)
    GlobalHydra.instance().clear()
    configs = []
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            jobs, master = [overrides], None
            if multirun:
                try:
                    master = _compose_master(overrides)
                except (HydraException, OmegaConfBaseException, ConfigError, ValueError) as exc:
                    raise ConfigError(explain(exc, list(overrides))) from None
                jobs = expand_sweep(overrides, sweeper_params(master.hydra))
            for job in jobs:
                try:
                    cfg = compose("config", overrides=list(job))
                    configs.append(OmegaConf.to_object(cfg))
                except (HydraException, OmegaConfBaseException, ConfigError, ValueError) as exc:
                    raise ConfigError(explain(exc, list(job))) from None
            if master is not None:
                check_cluster_launcher(master.hydra, configs)
    except HydraException as exc:  # the sweep syntax itself
        raise ConfigError(explain(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    return configs


def _check_launcher_plugin(overrides: List[str]) -> None:
    """hydra/launcher=submitit_* needs the plugin; without it Hydra's error names a schema, not the fix."""
    for line in overrides:
        key, _, value = line.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and value.startswith("submitit"):
            if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
                raise ConfigError(f"hydra/launcher={value} needs hydra-submitit-launcher: pip install 'asyncsgd[slurm]'")


def check_cluster_launcher(hydra_cfg: DictConfig, configs: List[Config]) -> None:
    """A SLURM job array asks for one task count for all its jobs, and srun (not us) starts the workers."""
    if OmegaConf.select(hydra_cfg, "runtime.choices") is None:
        return
    if hydra_cfg.runtime.choices.get("hydra/launcher") != "submitit_slurm":
        return
    if any(cfg.launcher.name != "external" for cfg in configs):
        raise ConfigError("hydra/launcher=submitit_slurm starts each run's workers with srun: add launcher=external")
    tasks = int(hydra_cfg.launcher.nodes) * int(hydra_cfg.launcher.tasks_per_node)
    sizes = sorted({cfg.world_size for cfg in configs})
    if sizes != [tasks]:
        raise ConfigError(
            f"hydra/launcher=submitit_slurm gives every job hydra.launcher.nodes x hydra.launcher.tasks_per_node = "
            f"{tasks} tasks, but the jobs ask for world_size={','.join(map(str, sizes))}; "
            "run one multirun per world size"
        )


def check_combination(cfg: Config) -> None:
    """Settings that are valid alone but not together."""
    from .data import check_sizes, dataset_input_shape
    from .models import check_model_input

    check_model_input(cfg.model, dataset_input_shape(cfg.dataset))
    check_sizes(cfg.dataset, cfg.train.batch_size, cfg.world_size)
    if cfg.strategy.name == "ddp" and cfg.backend.name == "mpi":
        raise ConfigError("strategy=ddp needs torch.distributed: use backend=gloo or backend=nccl (not backend=mpi)")
    if cfg.strategy.name == "layerwise" and cfg.strategy.wait_at == "forward" and cfg.train.grad_clip_norm:
        raise ConfigError(
            "train.grad_clip_norm needs the whole gradient before any update, but strategy.wait_at=forward "
            "updates layer by layer; use strategy.wait_at=step or drop train.grad_clip_norm"
        )
    if cfg.launcher.name == "emulated":
        from .launch.link import LinkSpec

        if cfg.backend.name not in ("gloo", "mpi"):
            raise ConfigError(f"launcher=emulated runs backend=gloo or backend=mpi, not backend={cfg.backend.name}")
        room = LinkSpec.from_config(cfg.cluster).max_workers
        if cfg.world_size > room:
            raise ConfigError(
                f"world_size={cfg.world_size} does not fit the emulated cluster: cluster.subnet={cfg.cluster.subnet} "
                f"has addresses for {room} workers; use a larger cluster.subnet (10.213.0.0/24 holds 253)"
            )


_probe_cache: dict = {}


def check_environment(cfg: Config) -> None:
    """What this machine must provide for ``cfg`` (checked once per distinct need)."""
    from .data import check_dataset_root

    check_dataset_root(cfg.dataset)
    backend = cfg.backend.name
    if cfg.launcher.name == "emulated":
        _check_emulation(cfg)
    if backend == "nccl":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "backend=nccl needs CUDA GPUs, but torch.cuda.is_available() is False on this machine; "
                "use backend=gloo or backend=mpi"
            )
        if cfg.launcher.name == "local" and cfg.world_size > torch.cuda.device_count():
            raise ConfigError(
                f"world_size={cfg.world_size} with backend=nccl needs one GPU per worker; "
                f"this machine has {torch.cuda.device_count()}"
            )
    if backend == "mpi":
        if importlib.util.find_spec("mpi4py") is None:
            raise ConfigError(
                "backend=mpi needs mpi4py: pip install 'asyncsgd[mpi]' (or use backend=gloo)"
            )
        if cfg.launcher.name in ("local", "emulated") and find_executable(cfg.backend.mpiexec) is None:
            raise ConfigError(
                f"backend.mpiexec={cfg.backend.mpiexec!r} was not found on PATH; install an MPI "
                "(pip install 'asyncsgd[mpi]' brings MPICH) or set backend.mpiexec"
            )
        if cfg.backend.progress == "library" and not _mpi_thread_multiple():
            raise ConfigError(
                "backend.progress=library needs an MPI with MPI_THREAD_MULTIPLE support, and this one "
                "does not provide it; use backend.progress=thread or test"
            )


def _check_emulation(cfg: Config) -> None:
    """Root, ip and tc, ip netns; netem only when a latency is asked for."""
    from .launch.netns import missing_requirements, netem_unavailable

    if "emulation" not in _probe_cache:
        _probe_cache["emulation"] = missing_requirements()
    if _probe_cache["emulation"]:
        raise ConfigError(_probe_cache["emulation"])
    if cfg.cluster.latency:
        why = netem_unavailable()
        if why:
            raise ConfigError(
                f"cluster.latency={cfg.cluster.latency} needs the netem qdisc, which this kernel does not have "
                f"(tc: {why}); leave cluster.latency unset to emulate bandwidth only"
            )


def _mpi_thread_multiple() -> bool:
    """Ask the MPI library (in a throwaway process, so this one never initialises MPI)."""
    if "thread_multiple" not in _probe_cache:
        code = "from mpi4py import MPI; print(int(MPI.Query_thread() == MPI.THREAD_MULTIPLE))"
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            _probe_cache["thread_multiple"] = out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            _probe_cache["thread_multiple"] = False
    return _probe_cache["thread_multiple"]


def check_all(overrides: List[str], multirun: bool) -> List[Config]:
    configs = compose_jobs(overrides, multirun)
    for cfg in configs:
        check_combination(cfg)
        check_environment(cfg)
    return configs
