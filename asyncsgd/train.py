"""The training loop of one worker: forward, backward, synchronize, update.

Every strategy runs through the same loop; timing goes through a
:class:`~asyncsgd.metrics.PhaseTimer` and bookkeeping through :class:`Tracker`,
so the loop itself reads like the algorithm.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from .checkpoint import Checkpointer, Position, resolve_resume, restore_rng
from .collapse import TrainingCollapsed, chance_loss, detect
from .comm import Communicator
from .comm.priority import yield_to_backend
from .config import Config
from .data import load_dataset, make_eval_loader, make_train_loader
from .io import atomic_torch_save
from .lr_schedule import make_lr_schedule
from .metrics import MetricsLog, PhaseTimer
from .models import average_buffers, build_model, count_parameters, loss_and_logits
from .runinfo import base_summary, update_summary
from .stopping import Interrupted, StopRequest
from .strategies import make_strategy
from .timeline import Timeline, trace_path, write_trace

log = logging.getLogger("asyncsgd")


def train(cfg: Config, run_dir: Path, comm: Communicator, threads: int, progress: bool = False) -> dict:
    """Train on this rank; returns the run summary (written to disk by rank 0)."""
    writer = comm.rank == 0  # one flag gates all file output
    if writer:  # under launcher=external no launcher wrote it; here the world size is the real one
        update_summary(run_dir, **base_summary(cfg, comm.size))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = comm.device

    data = load_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    for tensor in model.state_dict().values():  # identical start on every rank
        comm.broadcast(tensor, root=0)

    timer = PhaseTimer()
    timeline = Timeline(comm.rank, cfg.timeline_first_step, cfg.timeline_steps,
                        enabled=cfg.timeline and (writer or cfg.timeline_all_ranks))
    strategy = make_strategy(cfg.strategy, comm, timer, timeline, clip_norm=cfg.train.grad_clip_norm)
    strategy.nonfinite = cfg.train.nonfinite
    net = strategy.attach(model, sgd_factory(cfg))
    # after attach: the backend's threads (a process group per channel) exist and keep their priority
    cpu_priority = yield_to_backend(cfg.backend.compute_nice)
    timeline.watch(model)
    comm_alone = measure_allreduce(comm, model) if cfg.train.measure_comm else None
    loader = make_train_loader(data.train, cfg.train.batch_size, comm.rank, comm.size, cfg.seed, cfg.dataset.shuffle,
                               num_workers=cfg.dataset.workers)
    test_loader = make_eval_loader(data.test, max(256, cfg.train.batch_size), comm.rank, comm.size,
                                   num_workers=cfg.dataset.workers)
    total_steps = len(loader) * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    strategy.lr_schedule = make_lr_schedule(cfg.train.lr_schedule, total_steps, cfg.train.lr_warmup_steps)

    tracker = Tracker(cfg, comm, run_dir if writer else None, total_steps, progress and writer, timer)
    # the stretch judged is an epoch, or the whole run where train.max_steps ends it within its first
    tracker.watch_collapse(chance_loss(data.num_classes, cfg.model), steps_per_epoch=min(len(loader), total_steps))
    checkpoints = Checkpointer(cfg, comm, run_dir)
    checkpoints.config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    start, resume_rng = Position(), None
    resume_from = resolve_resume_everywhere(cfg, comm, run_dir)
    if resume_from is not None:
        start, resume_rng = checkpoints.restore(resume_from, model, strategy, tracker)
        log.info("resuming %s at step %d (epoch %d, batch %d)", resume_from, start.step, start.epoch, start.batch)
    log.info(
        "rank 0 of %d: %s, %s (%d parameters), strategy=%s, backend=%s, %d steps of global batch %d, %d threads",
        comm.size, cfg.dataset.name, cfg.model.name, count_parameters(model), cfg.strategy.name, comm.name,
        total_steps, cfg.train.batch_size * comm.size, threads,
    )

    step, epoch, batch_index = start.step, start.epoch, start.batch
    stop = StopRequest(comm, lag=strategy.stop_lag, slot=strategy.stop_slot)
    error: Optional[BaseException] = None
    try:
        while step < total_steps:
            batches = epoch_batches(loader, epoch, batch_index, resume_rng)
            resume_rng = None
            while step < total_steps:
                t0 = timer.start()
                with timer.phase("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                poison = inject_fault(cfg, comm.rank, step)

                strategy.zero_grad()
                with timer.phase("forward"):
                    loss, out = loss_and_logits(net(x), y, cfg.model)  # mean over the local batch (+ aux losses)
                    loss, loss_value = guarded(loss, poison)
                with timer.phase("backward"):
                    loss.backward()  # strategy hooks may start reductions here
                with timer.phase("comm_wait"):
                    strategy.synchronize()
                with timer.phase("update"):
                    strategy.step()

                tracker.iteration(step, epoch, loss_value, out, y, strategy.lr_at(step), timer.pop(), time.perf_counter() - t0,
                                  strategy.skipped)
                step += 1
                batch_index += 1
                at_step_boundary(Position(step, epoch, batch_index), stop, checkpoints, model, strategy, tracker)
                if tracker.evaluation_due(step, batch_index):
                    strategy.flush()  # evaluation needs the true current weights
                    tracker.evaluate_within_epoch(step, epoch, model, test_loader)
            epoch_done = batch is None  # the data ran out, not the step budget
            epoch, batch_index = epoch + 1, 0
            last = step >= total_steps
            evaluate_now = last or (cfg.train.eval_every_epochs > 0 and epoch % cfg.train.eval_every_epochs == 0)
            if evaluate_now:
                # Evaluation needs the true current weights: complete everything in flight. Only
                # then: a flush drains layerwise's and delayed-k's pipelines (a checkpoint flushes itself).
                strategy.flush()
            tracker.end_epoch(step, epoch - 1, model if evaluate_now else None, test_loader)
            if epoch_done and checkpoints.due_after_epoch(epoch):
                strategy.flush()
                checkpoints.save(Position(step, epoch, 0), model, strategy, tracker)
        strategy.finish()
        if epoch == 0 or not tracker.evaluated_at(step):
            tracker.end_epoch(step, max(epoch - 1, 0), model, test_loader)
    except BaseException as exc:
        error = exc
        raise
    finally:
        # An agreed stop is a clean end (everything was flushed for its checkpoint); any other
        # error may mean a peer is gone: then nothing may wait, and nothing may raise over it.
        clean = error is None or isinstance(error, Interrupted)
        close_all([("stop request", lambda: stop.close(complete=clean)),
                   ("strategy", strategy.close if clean else lambda: strategy.close(abort=True)),
                   ("timeline", timeline.close),
                   ("metrics", tracker.close)], after_error=not clean)

    summary = tracker.summary(model, strategy)
    summary["allreduce_alone_s"] = comm_alone
    summary["cpu_priority"] = cpu_priority
    if cfg.timeline:
        events = gather_timeline(timeline, comm, cfg.timeline_all_ranks)
        if writer:
            write_trace(trace_path(run_dir), events)
    if writer:
        atomic_torch_save(run_dir / "model_final.pt", model.state_dict())
        update_summary(run_dir, **summary)
    return summary


def sgd_factory(cfg: Config):
    """The optimizer for a list of parameters (strategies may make one per layer).

    ``fused=True``: one kernel per step, where torch's CPU default loops over tensors and
    allocates for weight decay; 1.3 ms instead of 3.5 ms for design.md's CNN with
    momentum and weight decay (scripts/bench_update.py). The same arithmetic, up to
    rounding (relative difference ~1e-7 after 20 steps)."""
    def make(params):
        return torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                               weight_decay=cfg.train.weight_decay, fused=True)
    return make


def close_all(steps, after_error: bool) -> None:
    """Run every clean-up step whatever the others do.

    ``after_error``: training already failed; a clean-up error is logged, never raised,
    so the first error is the one reported. Otherwise the first clean-up error is
    raised once every step has run."""
    first: Optional[BaseException] = None
    for what, close in steps:
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - each step must run; the error is reported below
            if after_error:
                log.warning("clean-up of the %s after the error also failed: %s: %s", what, type(exc).__name__, exc)
            elif first is None:
                first = exc
    if first is not None:
        raise first


def resolve_resume_everywhere(cfg: Config, comm: Communicator, run_dir: Path) -> Optional[Path]:
    """Rank 0 decides which checkpoint ``resume`` means (its run dir is the run's)."""
    path = resolve_resume(cfg.resume.path, run_dir) if comm.rank == 0 else None
    path = comm.broadcast_object(str(path) if path is not None else None, root=0)
    return Path(path) if path is not None else None


def epoch_batches(loader, epoch: int, skip_batches: int, resume_rng: Optional[dict]):
    """This rank's batches of ``epoch`` from batch ``skip_batches`` on.

    Starting an iterator draws a seed from torch's global RNG. The uninterrupted
    run drew it at the start of the epoch, before a mid-epoch checkpoint was
    taken: so on a mid-epoch resume the saved RNG state goes back *after* the
    draw, at an epoch start *before* it.
    """
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip_next(skip_batches * loader.batch_size)
    if resume_rng is not None and skip_batches == 0:
        restore_rng(resume_rng)
    batches = iter(loader)
    if resume_rng is not None and skip_batches > 0:
        restore_rng(resume_rng)
    return batches


def at_step_boundary(position: Position, stop: StopRequest, checkpoints: Checkpointer, model, strategy,
                     tracker: "Tracker") -> None:
    """Periodic checkpoint; or, when the workers agree to stop, a checkpoint and :class:`Interrupted`."""
    stopping = stop.poll()
    if not (stopping or checkpoints.due_after_step(position.step)):
        return
    strategy.flush()  # a checkpoint holds the true current weights (design.md, semantics 4)
    path = checkpoints.save(position, model, strategy, tracker)
    if stopping:
        raise Interrupted(position.step, stop.agreed, str(path) if path else None)


def guarded(loss: torch.Tensor, poison: bool) -> Tuple[torch.Tensor, float]:
    """The loss to backpropagate, and its value for the metrics. A non-finite loss (or a
    ``fault.kind=nan``) becomes a NaN gradient, so the *reduced* gradient, identical on every
    rank, carries the news and every rank takes the same stop/skip decision without another
    collective. The value is read once, here (on a GPU, one of the host syncs of a step)."""
    value = loss.item()
    if poison or not math.isfinite(value):
        return loss * float("nan"), float("nan")
    return loss, value


def measure_allreduce(comm: Communicator, model: torch.nn.Module, repeats: int = 15) -> Optional[float]:
    """Median time of one fused allreduce of the whole gradient, with nothing else running (T_comm)."""
    if comm.size == 1:
        return 0.0
    buffer = torch.zeros(sum(p.numel() for p in model.parameters()), device=comm.device)
    times = []
    for _ in range(repeats + 2):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(buffer)
        times.append(time.perf_counter() - t0)
    # every rank reports rank 0's figure so the summary is one number
    return comm.broadcast_object(statistics.median(times[2:]), root=0)


def gather_timeline(timeline: Timeline, comm: Communicator, all_ranks: bool) -> list:
    """Rank 0's trace events, plus every other rank's when asked (one broadcast per rank)."""
    events = timeline.trace_events() if comm.rank == 0 else []
    if all_ranks:
        for r in range(1, comm.size):
            theirs = comm.broadcast_object(timeline.trace_events() if comm.rank == r else None, root=r)
            if comm.rank == 0:
                events += theirs
    return events


def evaluate(model: torch.nn.Module, loader, comm: Communicator) -> tuple[float, float]:
    """Test loss and accuracy over the whole test set (each rank scores its share)."""
    average_buffers(model, comm)  # BatchNorm statistics: one set, from every rank's batches
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=comm.device)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(comm.device), y.to(comm.device)
            out = model(x)
            sums[0] += F.cross_entropy(out, y, reduction="sum").item()
            sums[1] += (out.argmax(1) == y).sum().item()
            sums[2] += len(y)
    model.train()
    comm.allreduce(sums, average=False)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def inject_fault(cfg: Config, rank: int, step: int) -> bool:
    """fault.rank/fault.step: fail on purpose, to prove the job does not hang.

    Returns True when this rank's loss must become NaN (fault.kind=nan).
    """
    if cfg.fault.rank != rank or cfg.fault.step != step:
        return False
    if cfg.fault.kind == "nan":
        return True
    if cfg.fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.fault.kind == "hang":
        log.warning("fault injected on rank %d at step %d: hanging", rank, step)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stuck, but a launcher can still end it
        while True:
            time.sleep(3600)
    raise RuntimeError(f"fault injected on rank {rank} at step {step} (fault.kind=raise)")


class Tracker:
    """Bookkeeping of one run: metrics rows, epoch statistics, progress bar, summary."""

    def __init__(self, cfg: Config, comm: Communicator, run_dir: Optional[Path], total_steps: int, progress: bool,
                 timer: PhaseTimer):
        self.cfg, self.comm, self.total_steps = cfg, comm, total_steps
        self.timer = timer
        self.metrics = MetricsLog(run_dir / "metrics.csv" if run_dir is not None else None)
        self.start = time.perf_counter()
        # This epoch on this rank, in Python numbers: per step they cost a third of tensor updates.
        self.loss_sum, self.correct, self.count = 0.0, 0, 0
        self.last_eval: Optional[dict] = None
        self.eval_s = 0.0  # seconds spent in test evaluations (left out of the time to target)
        self.chance: Optional[float] = None  # training loss of a uniform prediction (asyncsgd.collapse)
        self.steps_per_epoch = 0
        self.collapse: Optional[dict] = None
        self.run_dir = run_dir
        self.bar = None
        self._log_redirect = None
        if progress:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, desc=f"{cfg.strategy.name} P={comm.size}")
            # log lines go above the bar instead of through it
            self._log_redirect = logging_redirect_tqdm()
            self._log_redirect.__enter__()

    def iteration(self, step, epoch, loss_value: float, out, y, lr, times, t_iter, skipped: int = 0) -> None:
        n = y.shape[0]
        self.loss_sum += loss_value * n
        # detached, compared in place and read as one number: half the cost of int((out.argmax(1) == y).sum())
        self.correct += out.detach().argmax(1).eq_(y).sum().item()
        self.count += n
        samples = n * self.comm.size
        keep = step % self.cfg.train.log_every_steps == 0
        self.metrics.iteration(step, epoch, loss_value, lr, times, t_iter, samples,
                               time.perf_counter() - self.start, keep_row=keep, skipped=skipped, eval_s=self.eval_s)
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_postfix(loss=f"{loss_value:.3f}", samples_s=f"{samples / t_iter:.0f}", refresh=False)

    def end_epoch(self, step: int, epoch: int, model, test_loader) -> None:
        """Global train loss/accuracy of the epoch, and test metrics if ``model`` is given."""
        # queued behind any reduction in flight: a wait the next step would have made (PhaseTimer.start)
        with self.timer.phase("comm_wait"):
            sums = self.comm.allreduce(self.epoch_sums.to(self.comm.device), average=False)
        self.loss_sum, self.correct, self.count = 0.0, 0, 0
        values = {}
        if sums[2] > 0:
            values.update(train_loss=float(sums[0] / sums[2]), train_acc=float(sums[1] / sums[2]))
        if model is not None:
            if not self.evaluated_at(step):  # (an evaluation within the epoch may have just scored these weights)
                self._evaluate(step, model, test_loader)
            values.update(test_loss=self.last_eval["test_loss"], test_acc=self.last_eval["test_acc"])
        wall = time.perf_counter() - self.start
        self.metrics.epoch(step, epoch, wall, eval_s=self.eval_s, **values)
        if "test_acc" in values:
            log.info("epoch %d step %d: train loss %.4f, test accuracy %.4f (%.1fs)", epoch, step,
                     values.get("train_loss", float("nan")), values["test_acc"], wall)
        self._check_collapse()

    def evaluation_due(self, step: int, batch_index: int) -> bool:
        """train.eval_every_steps: a test evaluation within an epoch (epoch ends follow their own rule)."""
        every = self.cfg.train.eval_every_steps
        return every > 0 and step % every == 0 and step < self.total_steps and batch_index < self.steps_per_epoch

    def evaluate_within_epoch(self, step: int, epoch: int, model, test_loader) -> None:
        self._evaluate(step, model, test_loader)
        self.metrics.epoch(step, epoch, time.perf_counter() - self.start, kind="eval", eval_s=self.eval_s,
                           test_loss=self.last_eval["test_loss"], test_acc=self.last_eval["test_acc"])

    def _evaluate(self, step: int, model, test_loader) -> None:
        started = time.perf_counter()
        test_loss, test_acc = evaluate(model, test_loader, self.comm)
        self.last_eval = {"step": step, "test_loss": test_loss, "test_acc": test_acc}
        self.eval_s += time.perf_counter() - started

    # -- collapse to chance (asyncsgd.collapse) ----------------------------------
    def watch_collapse(self, chance: float, steps_per_epoch: int) -> None:
        self.chance, self.steps_per_epoch = chance, steps_per_epoch

    def _check_collapse(self) -> None:
        """Judge the complete epochs' mean training losses (identical on every rank); warn or stop once.

        A run flagged for not leaving chance in its first epoch is cleared if it learns after all."""
        if self.chance is None or not self.steps_per_epoch:
            return
        complete = [r["train_loss"] for r in self.metrics.epoch_rows()
                    if r.get("train_loss") is not None and r["step"] == (r["epoch"] + 1) * self.steps_per_epoch]
        verdict = detect(complete, self.chance)
        if verdict == self.collapse:
            return
        self.collapse = verdict
        if self.run_dir is not None:  # every rank knows; the writer says it
            if verdict is None:
                log.info("training left chance level after a slow start (%d epochs)", len(complete))
            else:
                log.warning("%s; this run is not training (train.on_collapse=%s)", verdict["message"],
                            self.cfg.train.on_collapse)
            update_summary(self.run_dir, collapse=verdict)
        if verdict is not None and self.cfg.train.on_collapse == "stop":
            raise TrainingCollapsed(f"{verdict['message']}; stopped (train.on_collapse=stop)")

    @property
    def epoch_sums(self) -> torch.Tensor:
        """(loss sum, correct, count) of this epoch on this rank."""
        return torch.tensor([self.loss_sum, self.correct, self.count], dtype=torch.float64)

    def state(self) -> dict:
        """Plain values for a checkpoint (the per-rank epoch sums travel separately, as a tensor)."""
        return {"rows": self.metrics.rows, "iter_times": self.metrics.iter_times,
                "wall_s": time.perf_counter() - self.start, "last_eval": self.last_eval,
                "eval_s": self.eval_s, "collapse": self.collapse}

    def load_state(self, state: dict, epoch_sums: torch.Tensor) -> None:
        self.metrics.restore(state["rows"], state["iter_times"])
        self.start = time.perf_counter() - state["wall_s"]  # wall_s continues where it stopped
        self.last_eval = state["last_eval"]
        self.eval_s = float(state.get("eval_s", 0.0))
        self.collapse = state.get("collapse")
        self.loss_sum, self.correct, self.count = float(epoch_sums[0]), int(epoch_sums[1]), int(epoch_sums[2])
        if self.bar is not None:
            self.bar.update(len(self.metrics.iter_times))

    def evaluated_at(self, step: int) -> bool:
        return self.last_eval is not None and self.last_eval["step"] == step

    def close(self) -> None:
        if self.bar is not None:
            self._log_redirect.__exit__(None, None, None)
            self.bar.close()
        self.metrics.flush()

    def summary(self, model, strategy) -> dict:
        cfg = self.cfg
        warmup = max(cfg.train.warmup_steps, strategy.settled_step)
        median = self.metrics.median_iter_s(warmup)
        global_batch = cfg.train.batch_size * self.comm.size
        target = cfg.dataset.target_acc
        # training time: evaluations are left out, so evaluating more often does not slow a run down on paper
        time_to_target = next(
            (r["wall_s"] - r.get("eval_s", 0.0) for r in self.metrics.evaluation_rows()
             if target is not None and r["test_acc"] >= target),
            None,
        )
        last = self.last_eval or {}
        return {
            "status": "complete",
            "steps": len(self.metrics.iter_times),
            "epochs_completed": sum(1 for r in self.metrics.epoch_rows() if "train_loss" in r),
            "median_iter_s": median,
            "warmup_steps": warmup,  # left out of it: train.warmup_steps, or until the strategy settled
            "throughput_samples_s": global_batch / median if median else None,
            "final_test_acc": last.get("test_acc"),
            "final_test_loss": last.get("test_loss"),
            "target_acc": target,
            "time_to_target_s": time_to_target,
            "train_wall_s": time.perf_counter() - self.start,
            "eval_s": self.eval_s,
            "collapse": self.collapse,
            "skipped_updates": strategy.skipped,
            "parameters": count_parameters(model),
            "gradient_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            **strategy.describe(),
            "comm": self.comm.describe(),
        }
