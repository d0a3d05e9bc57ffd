"""``asyncsgd-profile`` and ``asyncsgd-project``: the model's commands.

    asyncsgd-profile model=alexnet dataset=synthetic dataset.shape=[3,224,224] train.batch_size=32 --out alexnet-b32.json
    asyncsgd-profile --from-run results/runs/2026-11-30/10-00-00 --out cnn-b32.json
    asyncsgd-project alexnet-b32.json --workers 2,8,64,256,1024 --network ib-fdr --strategies sync,layerwise,delayed_k1
    asyncsgd-project validate results/bench/sweep --profiles profiles/ --network calibration.json
    asyncsgd-project calibrate --emulated 100mbit,1gbit --backend gloo,mpi --out calibration.json

``asyncsgd-profile`` takes the runner's own config overrides (Hydra composes
them exactly as for ``asyncsgd-run``). Bad input ends with one line and exit
status 2, as everywhere in the project.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _int_list(text: str, what: str, prog: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(prog, f"{what} {text!r}: expected comma-separated integers, e.g. 2,8,64")
    if not values or min(values) < 1:
        _fail(prog, f"{what} {text!r}: every value must be >= 1")
    return values


# ---------------------------------------------------------------------- asyncsgd-profile
def profile(argv: Optional[Sequence[str]] = None) -> None:
    """``asyncsgd-profile [OVERRIDES...] --out FILE``: measure a profile here (or read one from a run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="asyncsgd-profile", description=(
        "Measure per-layer forward/backward/update times of a model at a batch size on this machine "
        "(the runner's config overrides pick model, dataset, batch, threads), or extract them from a run's "
        "timeline.json; writes a profile JSON for asyncsgd-project."))
    parser.add_argument("overrides", nargs="*", help="asyncsgd-run config overrides, e.g. model=cnn train.batch_size=32")
    parser.add_argument("--out", required=True, type=Path, help="profile JSON to write")
    parser.add_argument("--repeats", type=int, default=20, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--concurrent", default="", help="also measure with N copies at once, e.g. 2,3,4 "
                                                        "(the compute slowdown of N workers on this machine's cores)")
    parser.add_argument("--from-run", type=Path, nargs="+", metavar="RUN_DIR",
                        help="extract from RUN_DIR/timeline.json instead (several runs of one model and batch: "
                             "medians over them)")
    parser.add_argument("--fill-from", type=Path, metavar="PROFILE",
                        help="with --from-run: take what a trace does not show (packing, scaling, zero_grad, "
                             "per-layer updates, slowdown) from this measured profile")
    parser.add_argument("--rank", type=int, default=0, help="with --from-run: whose trace (timeline_all_ranks=true)")
    parser.add_argument("--name", default="", help="the profile's name (default: the file name)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        _fail(parser.prog, "--repeats must be >= 1 and --warmup >= 0")
    from .profile import ProfileError

    try:
        if args.fill_from is not None and args.from_run is None:
            _fail(parser.prog, "--fill-from goes with --from-run")
        if args.from_run is not None:
            if args.overrides:
                _fail(parser.prog, "--from-run takes no config overrides (the run's own config is used)")
            from .measure import fill_from, merge_runs, profile_from_run
            from .profile import load_profile

            runs = [profile_from_run(run, args.rank) for run in args.from_run]
            prof = runs[0] if len(runs) == 1 else merge_runs(runs)
            if args.fill_from is not None:
                prof = fill_from(prof, load_profile(args.fill_from))
        else:
            from ..config import ConfigError
            from ..validate import check_combination, compose_jobs
            from .measure import measure_profile

            try:
                configs = compose_jobs(args.overrides, multirun=False)
                check_combination(configs[0])
            except ConfigError as exc:
                _fail(parser.prog, str(exc))
            concurrent = _int_list(args.concurrent, "--concurrent", parser.prog) if args.concurrent else []
            prof = measure_profile(configs[0], args.repeats, args.warmup, concurrent)
    except ProfileError as exc:
        _fail(parser.prog, str(exc))
    prof.name = args.name or args.out.stem
    try:
        prof.save(args.out)
    except OSError as exc:
        _fail(parser.prog, f"{args.out}: cannot write ({exc.strerror})")
    total = sum(l.forward_s + l.backward_s for l in prof.layers)
    print(f"{prof.name}: {len(prof.layers)} layers, {prof.nbytes / 1e6:.1f} MB of gradients, "
          f"forward+backward {total * 1e3:.1f} ms, iteration compute {prof.compute_s * 1e3:.1f} ms"
          + (f", slowdown {', '.join(f'{k}: {v:.2f}x' for k, v in sorted(prof.slowdown.items()))}" if prof.slowdown else ""))
    print(f"profile: {args.out}")


# ---------------------------------------------------------------------- asyncsgd-project
def _networks(spec: str, prog: str, backends: Sequence[str] = ()):
    from .network import NetworkError
    from .presets import load_network

    try:
        if backends:
            return {b: load_network(spec, b) for b in backends}
        return load_network(spec)
    except NetworkError as exc:
        _fail(prog, str(exc))


def _calibrated(path: str, prog: str) -> dict:
    """Every backend's network in a calibration file (asyncsgd-project calibrate)."""
    from .network import Network, NetworkError

    try:
        data = json.loads(Path(path).read_text())
        nets = data["networks"]
        return {b: Network.from_dict(n, f"{path} [{b}]") for b, n in nets.items()}
    except OSError as exc:
        _fail(prog, f"--network {path}: cannot read ({exc.strerror})")
    except NetworkError as exc:
        _fail(prog, str(exc))
    except (ValueError, KeyError, TypeError, AttributeError):
        _fail(prog, f"--network {path}: not a calibration file (asyncsgd-project calibrate writes one)")


def _strategies(text: str, prog: str):
    from .schedules import ScheduleError, StrategySpec

    try:
        return [StrategySpec.parse(s) for s in text.split(",") if s.strip()]
    except ScheduleError as exc:
        _fail(prog, str(exc))


def _project(argv: List[str]) -> None:
    from .network import yielded_share
    from .presets import network_names
    from .profile import ProfileError, load_profile
    from .project import DEFAULT_STRATEGIES, comm_dominates_at, scaling, scaling_markdown
    from .schedules import AS_IMPLEMENTED, IDEAL, RULESET, layerwise_bound_for, predict

    parser = _Parser(prog="asyncsgd-project", description=(
        "Project each strategy's iteration time from a profile over a network: speedup over sync at each "
        "worker count, as implemented and the ideal bound. Subcommands: validate, calibrate, paper."))
    parser.add_argument("profile", help="profile JSON (asyncsgd-profile) or the name of a shipped one")
    parser.add_argument("--workers", default="2,8,64,256,1024", help="worker counts, comma-separated")
    parser.add_argument("--network", required=True, help=f"a preset ({network_names()}) or a network JSON file")
    parser.add_argument("--backend", default=None, help="which network of a calibration file with several (gloo, mpi)")
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES, help="comma-separated: sync, sync_unfused, "
                        "layerwise, layerwise_step, layerwise_priority, delayed_k<K>, ddp, nocomm")
    parser.add_argument("--batch", type=int, default=None, help="scale the profile to this per-worker batch")
    parser.add_argument("--rate", default=None, help="override the network's link rate, e.g. 10gbit")
    parser.add_argument("--latency", type=float, default=None, help="override the network's latency (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write projection.md and projection.csv here")
    parser.add_argument("--trace", type=Path, default=None,
                        help="write the predicted Chrome trace of the first strategy at the first worker count")
    parser.add_argument("--compute-nice", type=int, default=0, metavar="N",
                        help="the runs' backend.compute_nice (0-19): the training thread yields the CPU to the "
                             "backend's threads, whose reductions then get more of a core while compute runs")
    args = parser.parse_args(argv)
    workers = _int_list(args.workers, "--workers", parser.prog)
    if not 0 <= args.compute_nice <= 19:
        _fail(parser.prog, f"--compute-nice {args.compute_nice} must be in [0, 19]")
    try:
        prof = load_profile(args.profile)
        if args.batch is not None:
            if args.batch < 1:
                _fail(parser.prog, f"--batch {args.batch} must be >= 1")
            prof = prof.at_batch(args.batch)
    except ProfileError as exc:
        _fail(parser.prog, str(exc))
    net = _networks(args.network, parser.prog, [args.backend] if args.backend else ())
    net = net[args.backend] if args.backend else net
    if args.rate or args.latency is not None:
        rate = None
        if args.rate:
            from .. import report as house

            mbit = house.link_rate_mbit(args.rate)
            if mbit != mbit:
                _fail(parser.prog, f"--rate {args.rate}: not a rate (e.g. 100mbit, 10gbit)")
            rate = mbit * 1e6
        net = net.with_link(rate_bps=rate, latency_s=args.latency)
    specs = _strategies(args.strategies, parser.prog)
    table = scaling(prof, net, workers, specs, compute_nice=args.compute_nice)
    dominates = comm_dominates_at(prof, net, workers)
    text = (f"# {prof.name} over {net.name}: {len(workers)} worker counts\n\n"
            f"Profile: {prof.source or prof.name}. Network: {net.source or net.name}. Compute per iteration "
            f"{prof.compute_s * 1e3:.1f} ms, {prof.nbytes / 1e6:.1f} MB of gradients; one allreduce of them alone takes "
            + ", ".join(f"{row.t_comm_ms:.1f} ms at {row.workers}" for row in
                        table.drop_duplicates("workers").itertuples())
            + (f"; it exceeds the compute from {dominates} workers on" if dominates else "; never more than the compute here")
            + ". The bound of layerwise(wait_at=forward) (design.md, per-layer updates): "
            + ", ".join(f"{layerwise_bound_for(prof, net, w) * 1e3:.1f} ms at {w}" for w in workers)
            + f".\n\nRules: {RULESET[AS_IMPLEMENTED]}; ideal: {RULESET[IDEAL]}."
            + (f" The training thread at nice +{args.compute_nice} (backend.compute_nice): a reduction gets "
               f"{yielded_share(net.cpu_share, args.compute_nice):.2f} of a core while compute runs, "
               f"against {net.cpu_share:.2f}." if args.compute_nice else "")
            + "\n\n" + scaling_markdown(table) + "\n")
    print(text)
    if args.out:
        from ..io import atomic_write_text

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "projection.md", text)
        atomic_write_text(args.out / "projection.csv", table.to_csv(index=False))
        print(f"written: {args.out / 'projection.md'}, {args.out / 'projection.csv'}")
    if args.trace:
        from ..timeline import write_trace

        pred = predict(prof, net, workers[0], specs[0], compute_nice=args.compute_nice)
        write_trace(args.trace, pred.trace)
        print(f"trace: {args.trace} ({specs[0].label}, {workers[0]} workers; open in https://ui.perfetto.dev)")


def _validate(argv: List[str]) -> None:
    from .profile import ProfileError, builtin_profiles, load_profile
    from .validate import ValidationError, validate, validate_runs_csv, write

    parser = _Parser(prog="asyncsgd-project validate", description=(
        "Predict every complete run under the directories from its profile and the calibrated network, "
        "and compare with the measured median iteration time."))
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories (searched recursively), or a "
                        "report's runs.csv whose run dirs are gone (e.g. results/reference/link-sweep/runs.csv)")
    parser.add_argument("--profiles", nargs="+", default=None,
                        help="profile files or directories of them (default: the shipped profiles)")
    parser.add_argument("--network", required=True, help="calibration JSON (asyncsgd-project calibrate)")
    parser.add_argument("--out", type=Path, default=None, help="write validation.md/.csv and the plot here")
    parser.add_argument("--no-ideal", action="store_true", help="skip the ideal bound per run (faster)")
    args = parser.parse_args(argv)
    paths = []
    for spec in args.profiles or [str(p) for p in builtin_profiles().values()]:
        p = Path(spec)
        # in a directory, the JSON files that are profiles (a calibration file may sit beside them)
        paths += [f for f in sorted(p.glob("*.json")) if '"layers"' in f.read_text()] if p.is_dir() else [p]
    try:
        profiles = [load_profile(p) for p in paths]
    except ProfileError as exc:
        _fail(parser.prog, str(exc))
    if not profiles:
        _fail(parser.prog, "no profiles given (--profiles FILE_OR_DIR ...)")
    networks = _calibrated(args.network, parser.prog)
    try:
        csvs = [d for d in args.dirs if d.suffix == ".csv"]
        if csvs and len(csvs) != len(args.dirs):
            _fail(parser.prog, "give either run directories or one runs.csv, not both")
        if len(csvs) > 1:
            _fail(parser.prog, "one runs.csv at a time")
        if csvs:
            result = validate_runs_csv(csvs[0], profiles, networks, with_ideal=not args.no_ideal)
        else:
            result = validate(args.dirs, profiles, networks, with_ideal=not args.no_ideal)
    except ValidationError as exc:
        _fail(parser.prog, str(exc))
    s = result.summary()
    print(f"{s['predicted']} of {s['runs']} runs predicted: median |error| {s['median_abs_error']:.1%}, "
          f"worst {s['worst_error']:+.1%} ({s['worst_run']}); ranking kept in {s['ranking_kept']:.0%} of "
          f"{s['cells']} settings ({s['ranking_kept_up_to_noise']:.0%} up to noise)"
          + (f"; repeat noise floor {s['noise_floor']:.1%}" if s["noise_repeat_runs"] else ""))
    if args.out:
        print(f"report: {write(result, args.out)}")


def _calibrate(argv: List[str]) -> None:
    from .calibrate import DEFAULT_SIZES, fit, run_sweep

    parser = _Parser(prog="asyncsgd-project calibrate", description=(
        "Fit the network model's constants (alpha, link efficiency, gamma, CPU cost, concurrency) from "
        "allreduce sweeps between emulated workers (root; see docs/emulated-cluster.md)."))
    parser.add_argument("--emulated", required=True, help="link rates, comma-separated (e.g. 100mbit,1gbit)")
    parser.add_argument("--backend", default="gloo,mpi", help="gloo, mpi or both")
    parser.add_argument("--world-sizes", default="2", help="workers per measurement, e.g. 2,3,4 (tells the algorithms apart)")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="allreduce sizes in bytes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="calibration JSON: the fitted networks and the raw data")
    parser.add_argument("--refit", type=Path, default=None, help="fit again from a calibration JSON's raw data")
    args = parser.parse_args(argv)
    backends = [b for b in args.backend.split(",") if b]
    bad = [b for b in backends if b not in ("gloo", "mpi")]
    if bad:
        _fail(parser.prog, f"--backend {','.join(bad)}: choose gloo and/or mpi")
    if args.refit:
        try:
            runs = json.loads(args.refit.read_text())["measurements"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _fail(parser.prog, f"--refit {args.refit}: not a calibration file ({exc})")
    else:
        from ..launch.netns import missing_requirements

        from .. import report as house

        rates = [r for r in args.emulated.split(",") if r]
        bad = [r for r in rates if house.link_rate_mbit(r) != house.link_rate_mbit(r)]
        if bad or not rates:
            _fail(parser.prog, f"--emulated {args.emulated}: expected rates like 100mbit,1gbit")
        reason = missing_requirements()
        if reason:
            _fail(parser.prog, reason)
        sizes = _int_list(args.sizes, "--sizes", parser.prog)
        worlds = _int_list(args.world_sizes, "--world-sizes", parser.prog)
        if min(worlds) < 2:
            _fail(parser.prog, "--world-sizes: an allreduce needs at least 2 workers")
        runs = run_sweep(backends, rates, worlds, sizes, args.repeats, progress=lambda m: print(m, flush=True))
    networks = {b: fit(runs, b, name=f"{b}-emulated") for b in backends if any(r["backend"] == b for r in runs)}
    from ..io import atomic_write_json

    atomic_write_json(args.out, {"format": "asyncsgd-calibration/1",
                                 "networks": {b: n.to_dict() for b, n in networks.items()}, "measurements": runs})
    for b, n in networks.items():
        algos = ", ".join(f"{r.algorithm} up to {int(r.up_to_bytes)} B" if r.up_to_bytes else f"{r.algorithm} above"
                          for r in n.ranges)
        print(f"{b}: alpha {n.alpha * 1e6:.0f} us, link efficiency {n.link_efficiency:.3f}, gamma {n.gamma * 1e9:.3f} "
              f"ns/B, CPU {n.cpu_s_per_byte * 1e9:.3f} ns/B (+{n.cpu_s_per_call * 1e6:.0f} us, polling {n.cpu_poll:.2f} "
              f"core), share while computing "
              f"{n.cpu_share:.2f}, channels {n.channels}, concurrent {n.concurrent_efficiency or '-'}; {algos}")
    print(f"calibration: {args.out}")


def project(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"validate": _validate, "calibrate": _calibrate, "paper": _paper}
    if argv and argv[0] in commands:
        commands[argv[0]](argv[1:])
    else:
        _project(argv)


def _paper(argv: List[str]) -> None:
    from .paper import main

    main(argv)
