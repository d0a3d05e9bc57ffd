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
from .launch.environment import detect

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
    if conf.launcher.name == "external":
        from .worker import run_worker

        run_worker(conf, run_dir)
        return
    _run_local(conf, cfg, run_dir)


def _run_local(conf, cfg: DictConfig, run_dir: Path) -> None:
    from .launch.local import WorkerFailure, launch_local
    from .runinfo import base_summary, save_config, update_summary
    from .io import read_json

    save_config(run_dir, cfg)
    update_summary(run_dir, **base_summary(conf))
    try:
        if conf.launcher.name == "emulated":
            from .launch.emulated import launch_emulated as launch
        else:
            launch = launch_local
        launch(conf, run_dir, _progress_bar_wanted(conf.progress_bar))
    except WorkerFailure as failure:
        status = "interrupted" if failure.interrupted else "failed"
        update_summary(run_dir, status=status, error=failure.reason, failed_rank=failure.rank)
        print(f"asyncsgd-run: {failure} (run dir: {run_dir})", file=sys.stderr)
        _failed_jobs.append(str(run_dir))
        if HydraConfig.get().mode == RunMode.RUN:
            sys.exit(130 if failure.interrupted else 1)
        return
    summary = read_json(run_dir / "summary.json")
    _print_result(run_dir, summary)


def _fmt(value, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _print_result(run_dir: Path, s: dict) -> None:
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


_hydra_main = hydra.main(config_path="conf", config_name="config", version_base="1.3")(_task)


def run(argv: List[str] | None = None) -> None:
    """``asyncsgd-run``: validate everything, then hand over to Hydra."""
    argv = sys.argv[1:] if argv is None else argv
    register_configs()
    args = _hydra_args(argv)
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    if not informational:
        from .validate import check_all

        try:
            configs = check_all(args.overrides, args.multirun)
        except ConfigError as exc:
            print(f"asyncsgd-run: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        place = detect()
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


def report(argv: List[str] | None = None) -> None:
    """``asyncsgd-report DIR [DIR ...]``: tables (markdown, CSV) and plots from run dirs."""
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
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from .report import ReportError, make_report

    try:
        result = make_report(args.dirs, out=args.out, baseline=args.baseline, target_acc=args.target_acc,
                             title=args.title)
    except ReportError as exc:
        print(f"asyncsgd-report: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print(result.main_table)
    print(f"report: {result.markdown}", flush=True)


if __name__ == "__main__":
    run()
