"""Getting a profile: measured here for a config, or read out of a run's timeline.json.

:func:`measure_profile` runs the runner's own pieces — the dataset's loader,
the model, its loss, SGD with the run's settings — in one process with
``train.threads`` torch threads (1 by default) and times, per iteration:
fetching the batch, zero_grad, each layer's forward (pre-hook to the next
pre-hook), the loss, each layer's backward (from the previous layer's last
gradient to its own last one), the update of all parameters and of each
layer alone (with the finiteness check the strategies run first), packing
the gradients into a flat buffer and back, dividing them by the world size,
and the bookkeeping between iterations. Medians over ``repeats`` iterations
after ``warmup``. With ``concurrent`` it also runs N copies at once (N
workers on this machine's cores), starting each iteration together as a
data-parallel job does, and records how much slower the slowest of them
computes each iteration (:func:`lockstep_slowdown`).

:func:`profile_from_run` reads a run directory made with ``timeline=true``:
per-layer forward and backward spans, per-layer updates (``layerwise`` with
``wait_at=forward`` draws one per bucket) or the one update, and the data
time from metrics.csv.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .profile import Layer, Profile, ProfileError

CHUNK_SUFFIX = re.compile(r"\s*\[\d+/\d+\]$")  # layerwise's chunk of a bucket: "fc1 [2/9]"


def _layers(model) -> List[Tuple[str, object, list]]:
    """(name, module, its parameters not seen before) for every module owning parameters, in
    registration order: the layers of ``layerwise`` (layerwise.py, _make_buckets)."""
    seen = set()
    out = []
    for name, module in model.named_modules():
        fresh = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if fresh:
            out.append((name or type(module).__name__, module, fresh))
    return out


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_iterations(cfg, repeats: int, warmup: int, threads: int, detail: bool = True,
                     step_barrier=None) -> dict:
    """The measuring loop (one process). Returns raw per-iteration samples.

    ``step_barrier`` (a callable) is called before every iteration: copies running at once start
    each iteration together, as the workers of a data-parallel job do."""
    import torch

    from ..data import load_dataset, make_train_loader
    from ..models import build_model, loss_and_logits
    from ..train import sgd_factory

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    model.train()
    layers = _layers(model)
    params = [p for _, _, ps in layers for p in ps]

    sgd = sgd_factory(cfg)  # the runner's optimizer (fused SGD), per layer as layerwise updates

    opt_all = sgd(params)
    opt_layer = [sgd(ps) for _, _, ps in layers]
    loader = make_train_loader(data.train, cfg.train.batch_size, 0, 1, cfg.seed, cfg.dataset.shuffle, num_workers=0)

    stamps: Dict[str, float] = {}
    ready: Dict[int, float] = {}
    hooks = []
    for i, (_, module, ps) in enumerate(layers):
        hooks.append(module.register_forward_pre_hook(lambda m, a, i=i: stamps.__setitem__(f"f{i}", time.perf_counter())))
        for p in ps:  # a layer's gradient is complete when its last tensor's is (weight or bias, whichever is last)
            hooks.append(p.register_post_accumulate_grad_hook(
                lambda t, i=i: ready.__setitem__(i, time.perf_counter())))

    flat = torch.empty(sum(p.numel() for p in params))

    def finite(ps) -> bool:  # the strategies' check before every update (strategies/base.py, _finite)
        grads = [p.grad for p in ps if p.grad is not None]
        return bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum()))

    samples: Dict[str, List[float]] = {k: [] for k in ("data", "zero_grad", "loss", "update_all", "copy", "scale",
                                                       "between", "compute")}
    samples["forward"] = [[] for _ in layers]
    samples["backward"] = [[] for _ in layers]
    samples["update"] = [[] for _ in layers]
    batches = iter(loader)
    epoch = 0

    def next_batch():
        nonlocal batches, epoch
        batch = next(batches, None)
        if batch is None:
            epoch += 1
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        return batch

    # Pass 1: the loop exactly as train.py runs it (nothing else in between, so no cache is cold
    # that would not be in a run)
    for it in range(warmup + repeats):
        keep = it >= warmup
        if step_barrier is not None:
            step_barrier()
        t0 = time.perf_counter()
        x, y = next_batch()
        t1 = time.perf_counter()
        opt_all.zero_grad(set_to_none=False)
        t2 = time.perf_counter()
        stamps.clear()
        ready.clear()
        out = model(x)
        t3 = time.perf_counter()
        loss, logits = loss_and_logits(out, y, cfg.model)
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        if finite(params):
            opt_all.step()
        t6 = time.perf_counter()
        _ = loss.item()  # the loop's bookkeeping between iterations (train.py: Tracker.iteration,
        _ = (logits.detach().argmax(1) == y).sum()  # the stop flag's tensor)
        _ = torch.tensor([0.0])
        t7 = time.perf_counter()
        if keep:
            samples["data"].append(t1 - t0)
            samples["zero_grad"].append(t2 - t1)
            samples["loss"].append(t4 - t3)
            samples["update_all"].append(t6 - t5)
            samples["between"].append(t7 - t6)
            samples["compute"].append(t6 - t1)
            starts = [stamps[f"f{i}"] for i in range(len(layers))] + [t3]
            for i in range(len(layers)):
                samples["forward"][i].append(starts[i + 1] - starts[i])
            previous = t4
            for i in reversed(range(len(layers))):
                samples["backward"][i].append(ready[i] - previous)
                previous = ready[i]
    # Pass 2: what other strategies do with the same gradients: per-layer updates, packing, scaling
    for it in range(warmup + repeats if detail else 0):
        keep = it >= warmup
        x, y = next_batch()
        opt_all.zero_grad(set_to_none=False)
        loss_and_logits(model(x), y, cfg.model)[0].backward()
        for i, (_, _, ps) in enumerate(layers):
            a = time.perf_counter()
            if finite(ps):
                opt_layer[i].step()
            if keep:
                samples["update"][i].append(time.perf_counter() - a)
        a = time.perf_counter()
        offset = 0
        for p in params:
            flat[offset: offset + p.numel()].copy_(p.grad.reshape(-1))
            offset += p.numel()
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        b = time.perf_counter()
        flat.div_(2)
        c = time.perf_counter()
        if keep:
            samples["copy"].append((b - a) / 2)
            samples["scale"].append(c - b)
    for h in hooks:
        h.remove()
    names = [(name, type(module).__name__, [p.numel() * p.element_size() for p in ps]) for name, module, ps in layers]
    return {"layers": names, "samples": samples, "nbytes": sum(p.numel() * p.element_size() for p in params)}


def _concurrent_worker(cfg, repeats: int, warmup: int, threads: int, barrier, queue) -> None:
    raw = _time_iterations(cfg, repeats, warmup, threads, detail=False, step_barrier=barrier.wait)
    queue.put(raw["samples"]["compute"])


def lockstep_slowdown(per_worker: Sequence[Sequence[float]], alone_s: float) -> float:
    """How much slower a data-parallel iteration computes: each iteration's slowest copy (the one
    every other worker waits for in the reduction), median over iterations, over the time alone.

    With more processes than cores this is not each copy's own slowdown: 3 processes on 2 cores
    get 2/3 of a core each on average (1.5x), but in a given iteration two of them share a core
    while the third has one, and the step waits for the pair (2x; measured here: 2.0x in sync
    runs at 3 workers, where the copies' own medians said 1.47x).
    """
    iterations = min(len(w) for w in per_worker)
    return _median([max(w[i] for w in per_worker) for i in range(iterations)]) / alone_s


def measure_slowdown(cfg, processes: Sequence[int], repeats: int, warmup: int, threads: int,
                     alone_s: float) -> Dict[int, float]:
    """Compute time per iteration with N copies running at once in lockstep, over the time alone."""
    ctx = multiprocessing.get_context("spawn")
    out = {1: 1.0}
    for n in processes:
        if n <= 1:
            continue
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_concurrent_worker, args=(cfg, repeats, warmup, threads, barrier, queue))
                 for _ in range(n)]
        for p in procs:
            p.start()
        samples = [queue.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join()
        out[n] = lockstep_slowdown(samples, alone_s)
    return out


def measure_profile(cfg, repeats: int = 20, warmup: int = 3, concurrent: Sequence[int] = (),
                    name: str = "") -> Profile:
    """Measure ``cfg``'s model at its batch size on this machine (see the module docstring)."""
    threads = cfg.train.threads or 1
    raw = _time_iterations(cfg, repeats, warmup, threads)
    s = raw["samples"]
    nbytes = raw["nbytes"]
    layers = [Layer(name=n, type=t, tensors=tensors, forward_s=_median(s["forward"][i]),
                    backward_s=_median(s["backward"][i]), update_s=_median(s["update"][i]))
              for i, (n, t, tensors) in enumerate(raw["layers"])]
    alone = _median(s["compute"])
    slowdown = measure_slowdown(cfg, concurrent, repeats, warmup, threads, alone) if concurrent else {}
    shape = list(getattr(cfg.dataset, "shape", []) or [])
    return Profile(
        layers=layers, name=name, model=cfg.model.name, input_shape=shape, batch_size=cfg.train.batch_size,
        threads=threads, device=f"cpu: {_cpu_name()}, {os.cpu_count()} cores", cores=os.cpu_count(),
        source=(f"measured by asyncsgd-profile on {platform.node()} ({_cpu_name()}), {threads} torch thread(s), "
                f"median of {repeats} iterations after {warmup} warm-up, {time.strftime('%Y-%m-%d')}"),
        step={"data_s": _median(s["data"]), "zero_grad_s": _median(s["zero_grad"]), "loss_s": _median(s["loss"]),
              "update_all_s": _median(s["update_all"]), "between_s": _median(s["between"])},
        memory={"copy_s_per_byte": _median(s["copy"]) / nbytes, "scale_s_per_byte": _median(s["scale"]) / nbytes},
        slowdown=slowdown,
        measurements={"compute_s_alone": alone, "compute_s_samples": s["compute"], "dataset": cfg.dataset.name},
    )


# ---------------------------------------------------------------------- from a run's timeline
def _run_config(run_dir: Path):
    from omegaconf import OmegaConf

    from ..runinfo import to_config

    for path in (run_dir / ".hydra" / "config.yaml", run_dir / ".asyncsgd" / "config.yaml"):
        if path.is_file():
            return to_config(OmegaConf.load(path))
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        if isinstance(data.get("config"), dict):
            return to_config(data["config"])
    raise ProfileError(f"{run_dir}: no config (.hydra/config.yaml or summary.json) to rebuild the model from")


def model_layers(cfg) -> List[Tuple[str, str, List[int]]]:
    """(name, type, tensor bytes) of the run's model, built on the meta device (no memory, no data)."""
    import torch

    from ..data import dataset_input_shape
    from ..models import build_model

    shape = dataset_input_shape(cfg.dataset)
    classes = getattr(cfg.dataset, "num_classes", None) or 10
    with torch.device("meta"):
        model = build_model(cfg.model, tuple(shape), classes)
    return [(n, type(m).__name__, [p.numel() * p.element_size() for p in ps]) for n, m, ps in _layers(model)]


def profile_from_timeline(events: List[dict], layers: List[Tuple[str, str, List[int]]], rank: int = 0,
                          where: str = "timeline.json") -> Tuple[List[Layer], Dict[str, float], List[int]]:
    """Per-layer medians over the steps of ``rank``'s trace; returns (layers, step costs, steps used)."""
    labels = {f"{n} ({t})": i for i, (n, t, _) in enumerate(layers)}
    mine = [e for e in events if e.get("ph") == "X" and e.get("pid") == rank]
    steps = sorted({e["args"]["step"] for e in mine if "step" in e.get("args", {})})
    fwd = [[] for _ in layers]
    bwd = [[] for _ in layers]
    upd = [[] for _ in layers]
    update_all = []
    used = []
    for step in steps:
        ev = [e for e in mine if e["args"].get("step") == step]
        f_start = {}
        for e in ev:
            if e["name"].startswith("forward ") and e["name"][8:] in labels:
                f_start[labels[e["name"][8:]]] = (e["ts"], e["dur"])
            elif e["name"].startswith("backward ") and e["name"][9:] in labels:
                bwd[labels[e["name"][9:]]].append(e["dur"] / 1e6)
        if len(f_start) != len(layers):
            continue  # a step the trace caught only part of
        used.append(step)
        waits = [(e["ts"], e["dur"]) for e in ev if e.get("tid") == 2]
        for i in range(len(layers)):
            start, dur = f_start[i]
            if i + 1 < len(layers):
                end = f_start[i + 1][0]
                # the strategy's waits and updates run in the next layer's pre-hook: not this layer's forward
                inside = sum(d for ts, d in waits if start <= ts < end)
                fwd[i].append((end - start - inside) / 1e6)
            else:
                fwd[i].append(dur / 1e6)
        step_upd: Dict[int, float] = {}  # layer -> its update in this step: every chunk of it, summed
        for e in ev:
            if e.get("tid") != 2 or not e["name"].startswith("update"):
                continue
            # layerwise draws "update {bucket}" per bucket, or "update {bucket} [k/n]" per chunk
            target = CHUNK_SUFFIX.sub("", e["name"][len("update"):].strip())
            members = [labels.get(f"{n} ({t})") for n, t, _ in layers if n in target.split("+")] if target else []
            if target and members and not target.startswith("with gradient"):
                total = sum(sum(layers[i][2]) for i in members) or 1
                for i in members:
                    step_upd[i] = step_upd.get(i, 0.0) + e["dur"] / 1e6 * sum(layers[i][2]) / total
            else:
                update_all.append(e["dur"] / 1e6)
        for i, seconds in step_upd.items():
            upd[i].append(seconds)
    if not used:
        raise ProfileError(f"{where}: no step with a forward span for every layer of the model "
                           f"(rank {rank}); was the run made with timeline=true?")
    out = []
    for i, (n, t, tensors) in enumerate(layers):
        out.append(Layer(name=n, type=t, tensors=tensors, forward_s=_median(fwd[i]), backward_s=_median(bwd[i]),
                         update_s=_median(upd[i])))
    step_costs = {}
    if update_all:
        step_costs["update_all_s"] = _median(update_all)
    return out, step_costs, used


def profile_from_run(run_dir: Path, rank: int = 0) -> Profile:
    """A profile from a run directory holding timeline.json (``timeline=true``).

    What a trace does not show (packing and scaling costs, zero_grad, the bookkeeping between
    iterations, per-layer updates of a strategy that updates all at once) is left out;
    :func:`fill_from` takes it from a measured profile.
    """
    from ..timeline import TraceError, read_trace, trace_path

    run_dir = Path(run_dir)
    trace = trace_path(run_dir)
    try:
        events = read_trace(run_dir, needs="timeline=true (and timeline_steps >= 3)")
    except TraceError as exc:
        raise ProfileError(str(exc)) from None
    cfg = _run_config(run_dir)
    layers, step_costs, used = profile_from_timeline(events, model_layers(cfg), rank, str(trace))
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        import pandas as pd

        frame = pd.read_csv(metrics)
        iters = frame[frame["kind"] == "iter"]
        iters = iters[iters["step"].isin(used)] if iters["step"].isin(used).any() else iters
        step_costs["data_s"] = float(iters["t_data"].median())
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return Profile(
        layers=layers, name=run_dir.name, model=cfg.model.name, input_shape=list(getattr(cfg.dataset, "shape", []) or []),
        batch_size=cfg.train.batch_size, threads=cfg.train.threads, device=str(summary.get("host", "")),
        source=f"extracted from {trace} (rank {rank}, steps {used[0]}..{used[-1]}, medians); "
               f"run: strategy={cfg.strategy.name}, backend={cfg.backend.name}, world_size={cfg.world_size}",
        step=step_costs,
        measurements={"steps": used, "world_size": cfg.world_size, "strategy": cfg.strategy.name},
    )


def _median_layers(profiles: Sequence[Profile]) -> List[Layer]:
    first = profiles[0]
    for p in profiles[1:]:
        if [l.name for l in p.layers] != [l.name for l in first.layers]:
            raise ProfileError(f"profiles {first.name} and {p.name} have different layers: not the same model")
    return [Layer(name=l.name, type=l.type, tensors=l.tensors,
                  forward_s=_median([p.layers[i].forward_s for p in profiles]),
                  backward_s=_median([p.layers[i].backward_s for p in profiles]),
                  update_s=_median([p.layers[i].update_s for p in profiles]))
            for i, l in enumerate(first.layers)]


def merge_runs(profiles: Sequence[Profile]) -> Profile:
    """One profile from several runs' profiles of the same model and batch: medians per field."""
    if len({(p.model, p.batch_size) for p in profiles}) != 1:
        raise ProfileError("--from-run: the runs must share model and train.batch_size to make one profile")
    first = profiles[0]
    keys = sorted({k for p in profiles for k in p.step})
    step = {k: _median([p.step[k] for p in profiles if k in p.step]) for k in keys}
    worlds = sorted({p.measurements.get("world_size") for p in profiles}, key=str)
    return Profile(layers=_median_layers(profiles), name=first.name, model=first.model,
                   input_shape=first.input_shape, batch_size=first.batch_size, threads=first.threads,
                   device=first.device, step=step,
                   source=f"extracted from the timeline.json of {len(profiles)} run(s) (medians over runs): "
                          + "; ".join(p.source for p in profiles[:3]) + (" ..." if len(profiles) > 3 else ""),
                   measurements={"runs": len(profiles), "world_sizes": worlds})


def fill_from(profile: Profile, base: Profile) -> Profile:
    """``profile`` with what its trace could not show taken from ``base`` (a measured profile of the same
    model and batch): memory costs, zero_grad, loss, bookkeeping, per-layer updates where it has
    none, and the slowdown table, made relative to the world size the runs had."""
    if [l.name for l in base.layers] != [l.name for l in profile.layers]:
        raise ProfileError(f"--fill-from {base.name}: not the same model's layers as the runs")
    # Per-layer updates are memory-bound like the one fused update, and this machine's memory speed
    # drifts with its load (the base measured under load: 3x the runs' update): taken from the base,
    # they follow the runs' own fused update (base's per-layer / fused ratio kept), when both have one.
    ran, measured = profile.step.get("update_all_s"), base.step.get("update_all_s")
    factor = ran / measured if ran and measured else 1.0
    layers = [l if l.update_s > 0 else Layer(l.name, l.tensors, l.forward_s, l.backward_s, b.update_s * factor, l.type)
              for l, b in zip(profile.layers, base.layers)]
    step = {**{k: v for k, v in base.step.items() if k not in profile.step}, **profile.step}
    worlds = profile.measurements.get("world_sizes") or [profile.measurements.get("world_size")]
    at = worlds[0] if len(worlds) == 1 and isinstance(worlds[0], int) else None
    slowdown = {p: s / base.slowdown_at(at) for p, s in base.slowdown.items()} if at and base.slowdown else {}
    return Profile(layers=layers, name=profile.name, model=profile.model, input_shape=profile.input_shape or
                   base.input_shape, batch_size=profile.batch_size, threads=profile.threads, device=profile.device,
                   source=profile.source + f"; memory costs, zero_grad, bookkeeping and missing updates from {base.name}"
                   + (f" (updates x{factor:.3g}: the runs' fused update over {base.name}'s)" if factor != 1.0 else "")
                   + (f"; slowdown relative to {at} processes" if slowdown else ""),
                   step=step, memory=dict(base.memory), slowdown=slowdown, cores=base.cores,
                   measurements=profile.measurements)
