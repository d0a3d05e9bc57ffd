"""Typed config schema: one base dataclass per Hydra group, one subclass per choice.

The YAML files under the top-level ``conf/`` (installed as the package
``asyncsgd.conf``) pick a schema through their defaults list
(``- base_<choice>``), so Hydra rejects misspelled keys and wrong types while
composing. ``OmegaConf.to_object`` then builds these dataclasses, and each
``__post_init__`` checks values and names the override to fix. Checks that need
the machine (CUDA, mpi4py, mpiexec) live in :func:`asyncsgd.validate.check_environment`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .errors import ConfigError  # defined below everything that raises it; importable from here as before
from .launch.link import LinkSpec
from .lr_schedule import LR_SCHEDULES


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: Any, allowed: list) -> None:
    _require(value in allowed, f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


# ---------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    root: Optional[str] = None  # directory holding the on-disk data (unused by in-memory sets)
    shuffle: bool = True  # reshuffle every epoch with a permutation seeded by seed+epoch
    subset: Optional[int] = None  # use only the first N samples of a seeded permutation
    test_subset: Optional[int] = None  # evaluate on only the first N test samples of a fixed permutation
    target_acc: Optional[float] = None  # test accuracy that defines "time to target"
    workers: int = 0  # DataLoader processes per rank that decode/augment samples; 0 = in the training process

    def __post_init__(self) -> None:
        if self.subset is not None:
            _require(self.subset >= 1, f"dataset.subset={self.subset} must be >= 1 (or null for all samples)")
        if self.test_subset is not None:
            _require(self.test_subset >= 1, f"dataset.test_subset={self.test_subset} must be >= 1 (or null for all)")
        _require(self.workers >= 0, f"dataset.workers={self.workers} must be >= 0")
        if self.target_acc is not None:
            _require(0.0 < self.target_acc <= 1.0, f"dataset.target_acc={self.target_acc} must be in (0, 1]")


@dataclass
class DigitsConfig(DatasetConfig):
    name: str = "digits"
    test_fraction: float = 0.2  # held-out share of scikit-learn's 1,797 images
    split_seed: int = 0  # fixed so every run is scored on the same held-out images
    target_acc: Optional[float] = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 < self.test_fraction < 1.0, f"dataset.test_fraction={self.test_fraction} must be in (0, 1)")


@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    shape: List[int] = field(default_factory=lambda: [3, 32, 32])  # channels, height, width
    num_classes: int = 10
    num_train: int = 2048  # samples
    num_test: int = 512  # samples
    noise: float = 1.0  # std of the per-sample noise around each class's mean image

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            len(self.shape) in (1, 3) and all(int(s) >= 1 for s in self.shape),
            f"dataset.shape={list(self.shape)} must be [features] or [channels, height, width] of positive sizes",
        )
        _require(self.num_classes >= 2, f"dataset.num_classes={self.num_classes} must be >= 2")
        _require(self.num_train >= 1, f"dataset.num_train={self.num_train} must be >= 1")
        _require(self.num_test >= 1, f"dataset.num_test={self.num_test} must be >= 1")
        _require(self.noise >= 0, f"dataset.noise={self.noise} must be >= 0")


@dataclass
class TorchvisionSetConfig(DatasetConfig):
    """A dataset read by torchvision's own class from its standard layout under ``root``.

    The YAML files default ``root`` to $ASYNCSGD_DATA: these sets live side by side under one directory.
    """

    download: bool = False  # fetch into dataset.root with torchvision's downloader (needs internet)


@dataclass
class MNISTConfig(TorchvisionSetConfig):
    name: str = "mnist"
    target_acc: Optional[float] = 0.98


@dataclass
class FashionMNISTConfig(TorchvisionSetConfig):
    name: str = "fashion_mnist"
    target_acc: Optional[float] = 0.88


@dataclass
class CIFAR10Config(TorchvisionSetConfig):
    name: str = "cifar10"
    augment: bool = True  # training images: random 32x32 crop of the 4-px zero-padded image, then random flip
    target_acc: Optional[float] = 0.80


@dataclass
class CIFAR100Config(CIFAR10Config):
    name: str = "cifar100"
    target_acc: Optional[float] = 0.50


@dataclass
class ImageNetConfig(DatasetConfig):
    """An ImageFolder tree: root/train/<class>/<image>, root/val/<class>/<image>."""

    name: str = "imagenet"
    size: int = 224  # px, side of the square crop fed to the model
    val_resize: Optional[int] = None  # px, shorter side before the center crop; null = size / 0.875 (256 for 224)
    min_scale: float = 0.08  # smallest share of the image area a training crop may cover
    workers: int = 2  # JPEG decoding is the bottleneck: decode in DataLoader processes

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.size >= 1, f"dataset.size={self.size} must be >= 1 (pixels)")
        if self.val_resize is not None:
            _require(
                self.val_resize >= self.size,
                f"dataset.val_resize={self.val_resize} must be >= dataset.size={self.size} (or null)",
            )
        _require(0.0 < self.min_scale <= 1.0, f"dataset.min_scale={self.min_scale} must be in (0, 1]")


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [128, 128])  # units per hidden layer

    def __post_init__(self) -> None:
        _require(all(int(h) >= 1 for h in self.hidden), f"model.hidden={list(self.hidden)} must be positive sizes")


@dataclass
class LeNetConfig(ModelConfig):
    name: str = "lenet"


@dataclass
class CNNConfig(ModelConfig):
    name: str = "cnn"


STEMS = ["auto", "imagenet", "small"]


def _probability(key: str, value: float) -> None:
    _require(0.0 <= value < 1.0, f"{key}={value} must be in [0, 1)")


@dataclass
class TorchvisionModelConfig(ModelConfig):
    """A torchvision network, randomly initialised, whose first layers may be adapted to small images."""

    # imagenet: torchvision's stem; small: a stride-1 3x3 first convolution without the early
    # downsampling (docs/models.md); auto: small when the input's shorter side is below 64 px.
    stem: str = "auto"

    def __post_init__(self) -> None:
        _one_of("model.stem", self.stem, STEMS)


@dataclass
class AlexNetConfig(TorchvisionModelConfig):
    name: str = "alexnet"
    dropout: float = 0.5  # probability, before each of the two 4096-wide layers

    def __post_init__(self) -> None:
        super().__post_init__()
        _probability("model.dropout", self.dropout)


@dataclass
class GoogLeNetConfig(TorchvisionModelConfig):
    name: str = "googlenet"
    aux_logits: bool = True  # the two auxiliary classifiers of the paper, trained alongside (ignored at test time)
    aux_weight: float = 0.3  # weight of each auxiliary classifier's loss in the training loss
    dropout: float = 0.2  # probability, before the main classifier
    dropout_aux: float = 0.7  # probability, inside each auxiliary classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.aux_weight >= 0, f"model.aux_weight={self.aux_weight} must be >= 0")
        _probability("model.dropout", self.dropout)
        _probability("model.dropout_aux", self.dropout_aux)


@dataclass
class ResNet18Config(TorchvisionModelConfig):
    name: str = "resnet18"


@dataclass
class ResNet50Config(TorchvisionModelConfig):
    name: str = "resnet50"


@dataclass
class VGG11Config(ModelConfig):
    """VGG-11 needs no stem change: its poolings round up, so 28x28 input survives all five."""

    name: str = "vgg11"
    batch_norm: bool = False  # vgg11_bn: BatchNorm after every convolution
    dropout: float = 0.5  # probability, before each of the two 4096-wide layers

    def __post_init__(self) -> None:
        _probability("model.dropout", self.dropout)


# ---------------------------------------------------------------- backend
@dataclass
class BackendConfig:
    name: str = MISSING
    timeout_s: float = 120.0  # a collective that takes longer than this fails the job
    # Added to the training thread's nice value once the backend's threads exist, so that they
    # preempt the compute when a reduction needs the CPU (asyncsgd.comm.priority; Linux; 0 = off).
    # Off by default: on a node shared with other jobs the training thread would yield to them too.
    compute_nice: int = 0

    def __post_init__(self) -> None:
        _require(self.timeout_s > 0, f"backend.timeout_s={self.timeout_s} must be > 0")
        _require(0 <= self.compute_nice <= 19,
                 f"backend.compute_nice={self.compute_nice} must be in [0, 19] (a thread may only lower its priority)")


MPI_PROGRESS = ["auto", "thread", "blocking", "test", "library"]


@dataclass
class MPIBackendConfig(BackendConfig):
    name: str = "mpi"
    # Who drives reductions: a communication thread polling non-blocking ones (thread), one
    # thread per channel in blocking calls (blocking), MPI_Test polling from the training
    # thread's hooks (test), or MPICH's progress thread (library); auto: thread for layerwise,
    # blocking for the others (resolve_progress)
    progress: str = "auto"
    # progress=thread: reductions the communication thread keeps in flight per channel (count);
    # two keep the link busy across one reduction's start-up and the next.
    max_inflight: int = 2
    mpiexec: str = "mpiexec"  # launcher used by launcher=local
    mpiexec_args: List[str] = field(default_factory=list)  # extra flags, e.g. ["-bind-to", "core"]

    def resolve_progress(self, strategy: Optional["StrategyConfig"]) -> str:
        """The mode ``progress=auto`` stands for with ``strategy``: ``blocking`` where a step reduces one
        fused gradient (sync, delayed, nocomm), which a blocking call drove at half the cost to the
        training thread's compute that the polled one had (docs/strategies.md); ``thread`` where there
        are many reductions to schedule (layerwise's chunks on two channels, sync with fuse=false),
        which it keeps two in flight per channel, channel 0 first. The communicator then follows the
        layout layerwise lays out (Communicator.suit_reductions: one reduction per step, blocking)."""
        if self.progress != "auto":
            return self.progress
        many = strategy is not None and (strategy.name == "layerwise" or not getattr(strategy, "fuse", True))
        return "thread" if many else "blocking"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("backend.progress", self.progress, MPI_PROGRESS)
        _require(self.max_inflight >= 1, f"backend.max_inflight={self.max_inflight} must be an integer >= 1")


@dataclass
class TorchDistConfig(BackendConfig):
    name: str = "gloo"
    master_port: int = 0  # 0 lets the launcher pick a free port


@dataclass
class GlooConfig(TorchDistConfig):
    name: str = "gloo"


@dataclass
class NCCLConfig(TorchDistConfig):
    name: str = "nccl"


# ---------------------------------------------------------------- strategy
@dataclass
class StrategyConfig:
    name: str = MISSING


@dataclass
class SyncConfig(StrategyConfig):
    name: str = "sync"
    fuse: bool = True  # one allreduce of all gradients flattened together (else one per tensor)


WAIT_AT = ["forward", "step"]


@dataclass
class LayerwiseConfig(StrategyConfig):
    name: str = "layerwise"
    # forward: wait for a layer's reduction and update it just before its forward in the
    # next iteration (the paper's method); step: wait for all right after backward.
    wait_at: str = "forward"
    # MiB; fuse layers adjacent in backward up to this size (0 = one reduction per layer), or
    # auto: try a few layouts for some steps each at the start, keep the fastest (asyncsgd.strategies.tuning)
    bucket_mb: Any = 0.0
    # Priority (asyncsgd.strategies.schedule): the layers the next forward needs first, up to
    # urgent_share of the gradient bytes, travel on a channel of their own ahead of the rest;
    # reductions are cut into chunks of chunk_mb, and a layer is updated chunk by chunk as its
    # chunks arrive.
    priority: bool = False
    chunk_mb: float = 1.0  # MiB per chunk (priority=true)
    urgent_share: float = 0.1  # fraction of the gradient bytes on the urgent channel (priority=true)
    # priority=true: the bucket the next forward uses last (of those not ready first in backward) is
    # sent after the rest of its lane, so the link's work of a step ends as late in the forward as it
    # can and the link idles less before the next backward's first gradient (asyncsgd.strategies.schedule)
    last_used_last: bool = False
    # MiB; fully connected layers with a larger weight are computed as row blocks of at most this
    # size, each a layer of its own (asyncsgd.strategies.split); 0 = off
    split_mb: float = 0.0

    def __post_init__(self) -> None:
        _one_of("strategy.wait_at", self.wait_at, WAIT_AT)
        _require(self.split_mb >= 0, f"strategy.split_mb={self.split_mb} must be >= 0 (MiB; 0 = off)")
        _require(self.bucket_mb == "auto" or (isinstance(self.bucket_mb, (int, float))
                                               and not isinstance(self.bucket_mb, bool) and self.bucket_mb >= 0),
                 f"strategy.bucket_mb={self.bucket_mb!r} must be a size in MiB >= 0 or auto")
        if self.bucket_mb != "auto":
            self.bucket_mb = float(self.bucket_mb)  # 4 and 4.0 are one setting (reports compare the text)
        _require(self.chunk_mb > 0, f"strategy.chunk_mb={self.chunk_mb} must be > 0 (MiB per chunk)")
        _require(0 <= self.urgent_share < 1, f"strategy.urgent_share={self.urgent_share} must be in [0, 1)")


COMPENSATIONS = ["momentum", "lr", "spike", "dc", "predict"]  # in the order they act within a step


def compensation_rules(spec: str) -> List[str]:
    """``strategy.compensation``: ``none`` or rules joined by ``+`` (any order); returns them in COMPENSATIONS order."""
    if spec == "none":
        return []
    parts = spec.split("+")
    _require(
        all(p in COMPENSATIONS for p in parts) and len(set(parts)) == len(parts),
        f"strategy.compensation={spec!r} is not allowed; use none or rules joined by + from "
        f"{', '.join(COMPENSATIONS)} (e.g. lr+dc), each at most once",
    )
    return [r for r in COMPENSATIONS if r in parts]


@dataclass
class DelayedConfig(StrategyConfig):
    name: str = "delayed"
    k: int = 1  # steps of staleness: the gradient of step t is applied at step t+k
    drain: bool = True  # at the end, apply the k gradients still in flight
    # Staleness compensation (docs/convergence.md): none, or rules joined by +
    # from momentum, lr, spike, dc, predict (asyncsgd.strategies.compensation), e.g. spike+predict.
    compensation: str = "none"
    dc_lambda: float = 2.0  # dc: lambda_0 of DC-ASGD (2 with dc_adaptive, as in the paper; it used 0.04 without)
    dc_adaptive: bool = True  # dc: lambda = dc_lambda / sqrt(running mean of g*g) (DC-ASGD-a)
    dc_beta: float = 0.95  # dc_adaptive: decay per update of that running mean

    def __post_init__(self) -> None:
        _require(self.k >= 0, f"strategy.k={self.k} must be an integer >= 0")
        compensation_rules(self.compensation)
        _require(self.dc_lambda >= 0, f"strategy.dc_lambda={self.dc_lambda} must be >= 0")
        _require(0.0 <= self.dc_beta < 1.0, f"strategy.dc_beta={self.dc_beta} must be in [0, 1)")


@dataclass
class DDPConfig(StrategyConfig):
    name: str = "ddp"
    # MiB; DDP's bucket_cap_mb. None = torch's default: 25 MiB buckets after a first one of
    # 1 MiB (any explicit size, 25 included, makes the first bucket that size too).
    bucket_mb: Optional[float] = None

    def __post_init__(self) -> None:
        _require(self.bucket_mb is None or self.bucket_mb > 0, f"strategy.bucket_mb={self.bucket_mb} must be > 0")


@dataclass
class NoCommConfig(StrategyConfig):
    """Timing baseline only: no gradient exchange at all (not data-parallel SGD)."""

    name: str = "nocomm"


# ---------------------------------------------------------------- launcher
@dataclass
class LauncherConfig:
    name: str = MISSING


@dataclass
class LocalLauncherConfig(LauncherConfig):
    name: str = "local"
    grace_s: float = 10.0  # after one worker fails, how long the others get to exit before SIGKILL

    def __post_init__(self) -> None:
        _require(self.grace_s > 0, f"launcher.grace_s={self.grace_s} must be > 0 (seconds)")


@dataclass
class ExternalLauncherConfig(LauncherConfig):
    name: str = "external"


@dataclass
class EmulatedLauncherConfig(LocalLauncherConfig):
    """One network namespace per worker on this machine, joined by rate-limited links (see ``cluster``)."""

    name: str = "emulated"


# ---------------------------------------------------------------- cluster (launcher=emulated)
MPI_NETMODS = ["ofi", "ucx"]


@dataclass
class ClusterConfig:
    """The emulated network of launcher=emulated (ignored by the other launchers).

    Units follow tc: rates in bit/s (bit, kbit, mbit, gbit, tbit), sizes in bytes
    (b, kb, mb; k = 1024), times in us, ms or s.
    """

    bandwidth: str = "1gbit"  # rate of every worker's link, in each direction (full duplex)
    latency: Optional[str] = None  # one-way worker-to-worker delay (netem, half per hop), e.g. 100us; null = none
    burst: Optional[str] = None  # tbf bucket: bytes that may leave at once; null = 1 ms at the rate, >= 16kb
    queue: str = "100ms"  # tbf latency: longest a packet waits in a link's queue before it is dropped
    mtu: int = 1500  # bytes per packet on the links
    subnet: str = "10.213.0.0/24"  # private addresses, used only inside the run's namespaces
    mpi_netmod: str = "ofi"  # MPICH ch4 netmod over TCP: ofi (libfabric tcp provider) or ucx

    def __post_init__(self) -> None:
        LinkSpec.from_config(self)  # raises ConfigError naming the cluster.* key
        _one_of("cluster.mpi_netmod", self.mpi_netmod, MPI_NETMODS)


# ---------------------------------------------------------------- train
NONFINITE = ["stop", "skip"]
ON_COLLAPSE = ["warn", "stop"]


@dataclass
class TrainConfig:
    batch_size: int = 16  # samples per worker per step; the global batch is world_size * batch_size
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many steps in total, whatever the epochs
    lr: float = 0.05
    # constant, or cosine: lr * (1 + cos(pi * step / total_steps)) / 2 for the gradient of each step
    # (asyncsgd.lr_schedule), whichever step the strategy applies it at
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0  # the rate ramps up linearly over these first steps (Goyal et al. 2017)
    momentum: float = 0.0
    weight_decay: float = 0.0
    threads: Optional[int] = None  # torch threads per worker; null = cores // workers on this host
    eval_every_epochs: int = 1  # test-set evaluation period; 0 = only at the end
    eval_every_steps: int = 0  # also evaluate every N steps within epochs (time to target); 0 = never
    warmup_steps: int = 5  # steps left out of the median iteration time
    log_every_steps: int = 1  # per-iteration metric rows are kept every N steps
    grad_clip_norm: Optional[float] = None  # clip the global gradient norm to this before each update
    measure_comm: bool = False  # time fused allreduces of the whole gradient alone before training (T_comm)
    # A NaN/inf loss or reduced gradient: stop the run naming the step, or skip that
    # update on every rank (the reduced gradient is the same everywhere) and count it.
    nonfinite: str = "stop"
    # Training loss at chance level, ln(classes), for a whole epoch after having been below it, or
    # from the first epoch on (asyncsgd.collapse): warn (log + summary.json) or stop the run (failed).
    on_collapse: str = "warn"

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1")
        _require(self.epochs >= 0, f"train.epochs={self.epochs} must be >= 0")
        _require(self.max_steps is None or self.max_steps >= 0, f"train.max_steps={self.max_steps} must be >= 0 or null")
        _require(self.lr >= 0, f"train.lr={self.lr} must be >= 0")
        _require(self.momentum >= 0, f"train.momentum={self.momentum} must be >= 0")
        _require(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        _require(self.threads is None or self.threads >= 1, f"train.threads={self.threads} must be >= 1 or null")
        _require(self.eval_every_epochs >= 0, f"train.eval_every_epochs={self.eval_every_epochs} must be >= 0")
        _require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be >= 0")
        _require(self.log_every_steps >= 1, f"train.log_every_steps={self.log_every_steps} must be >= 1")
        _require(self.grad_clip_norm is None or self.grad_clip_norm > 0,
                 f"train.grad_clip_norm={self.grad_clip_norm} must be > 0 or null")
        _one_of("train.nonfinite", self.nonfinite, NONFINITE)
        _require(self.eval_every_steps >= 0, f"train.eval_every_steps={self.eval_every_steps} must be >= 0")
        _one_of("train.on_collapse", self.on_collapse, ON_COLLAPSE)
        _one_of("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _require(self.lr_warmup_steps >= 0, f"train.lr_warmup_steps={self.lr_warmup_steps} must be >= 0")


@dataclass
class FaultConfig:
    """Deliberate failure of one worker, for testing that a job never hangs."""

    rank: Optional[int] = None  # which rank fails; null = no fault
    step: int = 0  # at the start of this step
    # raise an exception, kill (SIGKILL itself), nan (this rank's loss becomes NaN),
    # or hang (alive but stuck: its peers' collectives time out after backend.timeout_s)
    kind: str = "raise"

    def __post_init__(self) -> None:
        _one_of("fault.kind", self.kind, ["raise", "kill", "nan", "hang"])
        _require(self.step >= 0, f"fault.step={self.step} must be >= 0")


# ---------------------------------------------------------------- checkpoint / resume
@dataclass
class CheckpointConfig:
    """Periodic checkpoints in RUN_DIR/checkpoints (a stop by SIGTERM/SIGINT always writes one)."""

    every_steps: int = 0  # steps between checkpoints; 0 = none by step count
    every_epochs: int = 0  # epochs between checkpoints (written after the epoch's evaluation); 0 = none
    keep: int = 2  # newest checkpoints kept; older ones are deleted once a newer one is complete

    def __post_init__(self) -> None:
        _require(self.every_steps >= 0, f"checkpoint.every_steps={self.every_steps} must be >= 0 (0 = off)")
        _require(self.every_epochs >= 0, f"checkpoint.every_epochs={self.every_epochs} must be >= 0 (0 = off)")
        _require(self.keep >= 1, f"checkpoint.keep={self.keep} must be >= 1")


@dataclass
class ResumeConfig:
    """``resume=auto`` / ``resume=PATH`` on the command line are short for ``resume.path=...``."""

    # null: start fresh; auto: the newest checkpoint in hydra.run.dir (fresh if the dir has no run);
    # PATH: a checkpoint file, or a run dir / its checkpoints dir (its newest checkpoint)
    path: Optional[str] = None
    allow_changes: bool = False  # accept config changes that keep the checkpoint meaningful (not world_size, model...)


# ---------------------------------------------------------------- top level
@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    backend: BackendConfig = MISSING
    strategy: StrategyConfig = MISSING
    launcher: LauncherConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # only for launcher=emulated
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    world_size: int = 2  # number of workers (processes), P
    seed: int = 0  # model init and data order; identical on every rank
    progress_bar: Optional[bool] = None  # null = only on an interactive terminal
    timeline: bool = False  # write timeline.json (Chrome trace) of a few steps
    timeline_first_step: int = 5  # first traced step (after warm-up)
    timeline_steps: int = 5  # number of traced steps
    timeline_all_ranks: bool = False  # trace every rank (gathered into one file by rank 0), not just rank 0

    def __post_init__(self) -> None:
        _require(self.world_size >= 1, f"world_size={self.world_size} must be >= 1")
        _require(self.timeline_first_step >= 0, f"timeline_first_step={self.timeline_first_step} must be >= 0")
        _require(self.timeline_steps >= 1, f"timeline_steps={self.timeline_steps} must be >= 1")
        if self.fault.rank is not None:
            _require(
                0 <= self.fault.rank < self.world_size,
                f"fault.rank={self.fault.rank} must be in [0, world_size={self.world_size})",
            )


GROUPS = {
    "dataset": {
        "digits": DigitsConfig,
        "synthetic": SyntheticConfig,
        "mnist": MNISTConfig,
        "fashion_mnist": FashionMNISTConfig,
        "cifar10": CIFAR10Config,
        "cifar100": CIFAR100Config,
        "imagenet": ImageNetConfig,
    },
    "model": {
        "mlp": MLPConfig,
        "lenet": LeNetConfig,
        "cnn": CNNConfig,
        "alexnet": AlexNetConfig,
        "googlenet": GoogLeNetConfig,
        "resnet18": ResNet18Config,
        "resnet50": ResNet50Config,
        "vgg11": VGG11Config,
    },
    "backend": {"mpi": MPIBackendConfig, "gloo": GlooConfig, "nccl": NCCLConfig},
    "strategy": {"sync": SyncConfig, "layerwise": LayerwiseConfig, "delayed": DelayedConfig, "ddp": DDPConfig,
                 "nocomm": NoCommConfig},
    "launcher": {"local": LocalLauncherConfig, "external": ExternalLauncherConfig, "emulated": EmulatedLauncherConfig},
}


def register_configs() -> None:
    """Register the schemas so YAML files can extend them as ``base_<choice>``."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, choices in GROUPS.items():
        for choice, schema in choices.items():
            cs.store(group=group, name=f"base_{choice}", node=schema)
    _register_slurm_launcher(cs)


def _register_slurm_launcher(cs: ConfigStore) -> None:
    """The submitit plugin's SLURM schema, as ``hydra/launcher/base_submitit_slurm``.

    Our ``hydra/launcher/submitit_slurm.yaml`` shadows the plugin's config of that
    name (to set tasks_per_node from world_size) and cannot list itself as its own
    default, so it extends the schema under this second name.
    """
    try:
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:  # the slurm extra is not installed; validate.py says so if it is asked for
        return
    # Stored as plain values: Hydra's plugin discovery imports the plugin module a second
    # time, and two SlurmQueueConf classes would refuse to merge with each other.
    plain = OmegaConf.to_container(OmegaConf.structured(SlurmQueueConf))
    cs.store(group="hydra/launcher", name="base_submitit_slurm", node=plain, provider="asyncsgd")
    # Hydra 1.3 still matches a YAML file to a same-named schema and warns that this is
    # deprecated; ours names its schema explicitly, so the match changes nothing.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore")
