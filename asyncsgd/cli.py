"""Command-line entry points.

    asyncsgd-run                                   # the default: digits, mlp, mpi, sync, 2 workers
    asyncsgd-run strategy=sync backend=gloo world_size=2
    asyncsgd-run -m world_size=1,2 backend=mpi,gloo  # a sweep, one run dir per job
    mpiexec -n 4 asyncsgd-run launcher=external     # under an external launcher (also torchrun, srun)
    asyncsgd-report results/multiruns/<date>/<time>  # tables and plots from run dirs
    asyncsgd-run launcher=emulated cluster.bandwidth=1gbit  # workers in network namespaces (root)

Every job of the command line is composed and checked before any worker starts;
a bad value ends with exit status 2 and one line naming the key. The same goes
for asyncsgd-report's arguments and input directories.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import os
import sys
import tempfile
from pathlib import Path
from typing import List

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import ConfigError, register_configs
from .launch.environment import check_world_size, detect
from .validate import CONFIG_MODULE, config_files

log = logging.getLogger("asyncsgd")

EXIT_USAGE = 2
_failed_jobs: List[str] = []


def _progress_bar_wanted(setting) -> bool:
    if setting is not None:
        return bool(setting)
    return sys.stderr.isatty() and not os.environ.get("CI")


def _task(cfg: DictConfig) -> None:
    from .runinfo import to_config

    conf = to_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    place = detect()
    writer = place is None or place.rank == 0 or conf.launcher.name != "external"
    if conf.resume.path is None and writer and (run_dir / "summary.json").exists() and not _is_scratch(run_dir):
        # Hydra's own dirs are new per job; an explicit dir may hold a result: never overwrite it.
        # (Only rank 0 writes, and may already have started this run's summary.)
        print(f"asyncsgd-run: error: {run_dir} already holds a run; choose a new hydra.run.dir "
              "or continue it with resume=auto", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if conf.launcher.name == "external":
        from .io import read_json
        from .worker import run_worker

        run_worker(conf, run_dir)
        if writer:  # rank 0: the same result line as launcher=local
            print_result(run_dir, read_json(run_dir / "summary.json"))
        return
    _run_local(conf, cfg, run_dir)


def _run_local(conf, cfg: DictConfig, run_dir: Path) -> None:
    from .launch.local import WorkerFailure, launch_local
    from .runinfo import save_config, start_attempt, update_summary
    from .io import read_json

    save_config(run_dir, cfg)
    start_attempt(run_dir, conf)
    try:
        if conf.launcher.name == "emulated":
            from .launch.emulated import launch_emulated as launch
        else:
            launch = launch_local
        launch(conf, run_dir, _progress_bar_wanted(conf.progress_bar))
    except WorkerFailure as failure:
        summary = read_json(run_dir / "summary.json")
        if failure.interrupted and summary.get("interrupted_at_step") is not None:
            # the workers stopped together and rank 0 recorded where: keep its account
            print(f"asyncsgd-run: interrupted at step {summary['interrupted_at_step']}, checkpoint "
                  f"{summary.get('checkpoint')}; continue with: asyncsgd-run resume=auto hydra.run.dir={run_dir}",
                  file=sys.stderr)
        else:
            status = "interrupted" if failure.interrupted else "failed"
            update_summary(run_dir, status=status, error=failure.reason, failed_rank=failure.rank)
            print(f"asyncsgd-run: {failure} (run dir: {run_dir})", file=sys.stderr)
        job_failed(run_dir)
        if HydraConfig.get().mode == RunMode.RUN:
            sys.exit(130 if failure.interrupted else 1)
        return
    summary = read_json(run_dir / "summary.json")
    print_result(run_dir, summary)


def job_failed(run_dir) -> None:
    """Note a job of this command that did not complete: listed at the end, exit status 1
    (a launcher that runs jobs elsewhere, e.g. on SLURM, reports them here too)."""
    _failed_jobs.append(str(run_dir))


def _is_scratch(run_dir: Path) -> bool:
    return run_dir.name.startswith("asyncsgd-rank")  # a non-zero rank's throwaway dir (launcher=external)


def _resume_shorthand(argv: List[str]) -> List[str]:
    """``resume=auto`` / ``resume=PATH`` mean ``resume.path=...`` (resume is also a section:
    resume.allow_changes)."""
    return [f"resume.path={a[len('resume='):]}" if a.startswith("resume=") else a for a in argv]


def _check_resume(conf, argv: List[str]) -> List[str]:
    """Before any worker starts: the checkpoint exists, reads, and fits this config.

    Returns the overrides with ``resume.path`` pinned to the checkpoint file, so every
    worker continues from the same one even if a newer one appears meanwhile.
    """
    from omegaconf import OmegaConf

    from .checkpoint import check_compatible, load_checkpoint, resolve_resume

    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if conf.resume.path == "auto" and not run_dirs:
        raise ConfigError("resume=auto continues the run in hydra.run.dir: add hydra.run.dir=RUN_DIR")
    path = resolve_resume(conf.resume.path, Path(run_dirs[-1]) if run_dirs else Path("."))
    if path is None:  # resume=auto where nothing ran yet: a fresh start (the launcher writes a summary next)
        return [a for a in argv if not a.startswith("resume.path=")]
    meta = load_checkpoint(path)["meta"]
    current = OmegaConf.to_container(OmegaConf.structured(conf), resolve=True)
    accepted = check_compatible(meta, current, conf.resume.allow_changes, path)
    for change in accepted:
        log.warning("resume.allow_changes: %s", change)
    return [a for a in argv if not a.startswith("resume.path=")] + [f"resume.path={path}"]


def _check_new_run_dir(argv: List[str]) -> None:
    """An explicit hydra.run.dir must be a directory we can create and write, holding no run yet
    (checked before Hydra writes into it)."""
    for a in argv:
        if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):
            continue
        key, value = a.split("=", 1)
        path = Path(value).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{key}={value}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}={value}: {existing} is not writable")
        if key == "hydra.run.dir" and (path / "summary.json").exists():
            raise ConfigError(f"{value} already holds a run; choose a new hydra.run.dir "
                              "or continue it with resume=auto")


def _fmt(value, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def print_result(run_dir: Path, s: dict) -> None:
    median_ms = s["median_iter_s"] * 1000 if s.get("median_iter_s") else None
    print(
        f"{s.get('strategy')} on {s.get('backend')}, {s.get('world_size')} workers: "
        f"test accuracy {_fmt(s.get('final_test_acc'), '.4f')}, "
        f"median iteration {_fmt(median_ms, '.2f', ' ms')}, "
        f"throughput {_fmt(s.get('throughput_samples_s'), '.0f', ' samples/s')}\n"
        f"results: {run_dir}",
        flush=True,
    )


def _hydra_args(argv: List[str]):
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


# The configs by package, not by path: the same under ``python -m asyncsgd.cli``, an
# editable install (asyncsgd.conf is the checkout's conf/) and a wheel.
_hydra_main = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")(_task)


def run(argv: List[str] | None = None) -> None:
    """``asyncsgd-run``: validate everything, then hand over to Hydra."""
    argv = _resume_shorthand(sys.argv[1:] if argv is None else argv)
    register_configs()
    try:
        config_files()  # before Hydra, whose own message would not say how to fix it
    except ConfigError as exc:
        print(f"asyncsgd-run: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    args = _hydra_args(argv)
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    if not informational:
        from .validate import check_all

        place = detect()
        try:
            configs = check_all(args.overrides, args.multirun)
            first_rank = place is None or place.rank == 0  # other ranks may not see rank 0's files
            if configs and first_rank:
                if configs[0].resume.path is not None and not args.multirun:
                    argv = _check_resume(configs[0], argv)
                else:
                    _check_new_run_dir(args.overrides)
        except ConfigError as exc:
            print(f"asyncsgd-run: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        if configs and configs[0].launcher.name == "external" and not args.multirun:
            try:
                check_world_size(place, configs[0].world_size)
            except ConfigError as exc:
                if place.rank == 0:  # every rank finds it: one line, not one per rank
                    print(f"asyncsgd-run: error: {exc}", file=sys.stderr)
                sys.exit(EXIT_USAGE)
        if configs and configs[0].launcher.name == "external" and place is not None and place.rank != 0:
            # Only rank 0 writes; the others learn its run dir at start-up.
            scratch = tempfile.mkdtemp(prefix=f"asyncsgd-rank{place.rank}-")
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            argv = argv + ["hydra.output_subdir=null", f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}"]
    sys.argv = [sys.argv[0], *argv]
    _hydra_main()
    if _failed_jobs:
        print(f"asyncsgd-run: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}", file=sys.stderr)
        sys.exit(1)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line (and exit 2) the rest of the CLI gives."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def report_parser() -> argparse.ArgumentParser:
    """asyncsgd-report's arguments (the docs test parses every command line it shows with this)."""
    parser = _OneLineParser(
        prog="asyncsgd-report",
        description="Speedup and convergence tables (report.md, speedup.csv, runs.csv) and plots (PNG) "
        "from asyncsgd run directories or the multirun directories that hold them.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories, searched recursively")
    parser.add_argument("--out", help="where to write the report (default: the first DIR)")
    parser.add_argument("--baseline", default="sync",
                        help="strategy the speedups compare with: a name (sync) or a label (delayed(k=1)); default sync")
    parser.add_argument("--target-acc", type=float, metavar="A",
                        help="test accuracy (fraction, e.g. 0.95) for time to target; default: each dataset's target_acc")
    parser.add_argument("--title", help="heading of report.md, e.g. the machine and date of the runs")
    parser.add_argument("--not-a-setting", default="", metavar="KEYS",
                        help="comma-separated config keys whose values do not tell settings apart here, e.g. "
                             "train.max_steps when a sweep ran its slow cells for fewer steps")
    return parser


def report(argv: List[str] | None = None) -> None:
    """``asyncsgd-report DIR [DIR ...]``: tables (markdown, CSV) and plots from run dirs."""
    args = report_parser().parse_args(sys.argv[1:] if argv is None else argv)

    from .report import ReportError, make_report

    try:
        result = make_report(args.dirs, out=args.out, baseline=args.baseline, target_acc=args.target_acc,
                             title=args.title, not_settings=[k for k in args.not_a_setting.split(",") if k])
    except ReportError as exc:
        print(f"asyncsgd-report: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print(result.main_table)
    print(f"report: {result.markdown}", flush=True)


if __name__ == "__main__":
    # `python -m asyncsgd.cli` runs this file as __main__, a second copy of the module: go through
    # the imported one, whose failed-job list the launchers of other modules report to (job_failed).
    from asyncsgd.cli import run as _run

    _run()
