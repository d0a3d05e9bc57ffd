"""Config composition and value checks, before any worker starts."""
from __future__ import annotations

import pytest

from asyncsgd.config import ConfigError
from asyncsgd.validate import check_all, compose_jobs, expand_sweep

from ..conftest import HAVE_MPI, run_cli


def test_defaults_compose_to_the_documented_experiment():
    (cfg,) = compose_jobs([], multirun=False)
    assert (cfg.dataset.name, cfg.model.name, cfg.backend.name, cfg.strategy.name) == ("digits", "mlp", "mpi", "sync")
    assert cfg.world_size == 2 and cfg.launcher.name == "local"


@pytest.mark.parametrize("group,choice", [
    ("dataset", "digits"), ("dataset", "synthetic"), ("model", "mlp"), ("model", "lenet"), ("model", "cnn"),
    ("backend", "mpi"), ("backend", "gloo"), ("backend", "nccl"), ("strategy", "sync"),
    ("strategy", "layerwise"), ("strategy", "delayed"), ("strategy", "ddp"), ("strategy", "nocomm"),
    ("launcher", "local"), ("launcher", "external"),
])
def test_every_option_composes(group, choice):
    (cfg,) = compose_jobs([f"{group}={choice}"], multirun=False)
    assert getattr(cfg, group).name == choice


def test_sweep_expands_to_every_combination_in_order():
    jobs = expand_sweep(["world_size=1,2", "backend=mpi,gloo"])
    assert jobs == [
        ["world_size=1", "backend=mpi"], ["world_size=1", "backend=gloo"],
        ["world_size=2", "backend=mpi"], ["world_size=2", "backend=gloo"],
    ]
    configs = compose_jobs(["world_size=1,2", "backend=mpi,gloo"], multirun=True)
    assert [(c.world_size, c.backend.name) for c in configs] == [(1, "mpi"), (1, "gloo"), (2, "mpi"), (2, "gloo")]


@pytest.mark.parametrize("override,expected", [
    ("dataset=foo", "dataset=foo is not an option; choose one of cifar10, cifar100, digits, fashion_mnist, imagenet, mnist, synthetic"),
    ("strategy=nope", "strategy=nope is not an option; choose one of"),
    ("train.lrr=0.1", "train.lrr is not a config key; valid keys under train: batch_size"),
    ("world_size=0", "world_size=0 must be >= 1"),
    ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("train.batch_size=abc", "train.batch_size='abc' is not a valid integer"),
    ("train.lr=-0.1", "train.lr=-0.1 must be >= 0"),
    ("train.epochs=-1", "train.epochs=-1 must be >= 0"),
    ("backend.progress=magic", "backend.progress='magic' is not allowed; choose one of auto, thread, blocking, test, library"),
    ("fault.rank=5", "fault.rank=5 must be in [0, world_size=2)"),
    ("strategy=delayed strategy.k=-1", "strategy.k=-1 must be an integer >= 0"),
    ("strategy=delayed strategy.k=1.5", "strategy.k='1.5' is not a valid integer"),
    ("strategy=layerwise strategy.bucket_mb=-1", "strategy.bucket_mb=-1 must be a size in MiB >= 0 or auto"),
    ("strategy=layerwise strategy.bucket_mb=fast", "strategy.bucket_mb='fast' must be a size in MiB >= 0 or auto"),
    ("strategy=layerwise strategy.priority=true strategy.urgent_share=1", "strategy.urgent_share=1.0 must be in [0, 1)"),
    ("backend=mpi backend.max_inflight=0", "backend.max_inflight=0 must be an integer >= 1"),
    ("strategy=layerwise strategy.chunk_mb=0", "strategy.chunk_mb=0.0 must be > 0"),
    ("strategy=layerwise strategy.wait_at=middle", "strategy.wait_at='middle' is not allowed; choose one of forward, step"),
    ("strategy=ddp backend=mpi", "strategy=ddp needs torch.distributed: use backend=gloo or backend=nccl"),
    ("strategy=layerwise train.grad_clip_norm=1.0", "train.grad_clip_norm needs the whole gradient"),
    ("strategy.k=2", "strategy.k is not a config key; valid keys under strategy:"),
])
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        check_all(override.split(), multirun=False)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_a_bad_job_in_a_sweep_is_found_before_any_job_runs():
    with pytest.raises(ConfigError, match=r"train.batch_size=0 must be >= 1"):
        check_all(["train.batch_size=16,0", "backend=gloo"], multirun=True)


def test_nccl_without_cuda_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="backend=nccl needs CUDA GPUs"):
        check_all(["backend=nccl"], multirun=False)


def test_image_model_on_flat_input_is_refused():
    with pytest.raises(ConfigError, match=r"model=cnn needs image input"):
        check_all(["dataset=synthetic", "dataset.shape=[64]", "model=cnn", "backend=gloo"], multirun=False)


def test_mpi_without_mpiexec_is_refused():
    if not HAVE_MPI:
        pytest.skip("needs mpi4py to reach the mpiexec check")
    with pytest.raises(ConfigError, match=r"backend.mpiexec='no-such-mpiexec' was not found"):
        check_all(["backend.mpiexec=no-such-mpiexec"], multirun=False)


@pytest.mark.parametrize("args,expected", [
    (["dataset=foo"], "dataset=foo is not an option"),
    (["train.bacth_size=3"], "train.bacth_size is not a config key"),
    (["world_size=0"], "world_size=0 must be >= 1"),
    (["backend=nccl"], "backend=nccl needs CUDA GPUs"),
    (["world_size=1,2"], "add -m (--multirun)"),
])
def test_cli_exits_2_with_one_line_and_writes_no_run(workdir, args, expected):
    result = run_cli(args, cwd=workdir, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("asyncsgd-run: error: ") and expected in lines[0]
    assert not (workdir / "results").exists()


def test_library_progress_needs_thread_multiple(monkeypatch):
    if not HAVE_MPI:
        pytest.skip("needs mpi4py")
    import asyncsgd.validate as validate

    monkeypatch.setattr(validate, "_mpi_thread_multiple", lambda: False)  # an MPI without thread support
    with pytest.raises(ConfigError, match="backend.progress=library needs an MPI with MPI_THREAD_MULTIPLE"):
        check_all(["backend.progress=library"], multirun=False)
    monkeypatch.undo()
    (cfg,) = check_all(["backend.progress=library"], multirun=False)  # this machine's MPICH has it
    assert cfg.backend.progress == "library"


def test_mpi_progress_auto_is_thread_for_layerwise_and_blocking_for_the_rest():
    from asyncsgd.config import DelayedConfig, LayerwiseConfig, MPIBackendConfig, SyncConfig

    auto = MPIBackendConfig()
    assert auto.progress == "auto"
    strategies = [LayerwiseConfig(), SyncConfig(), SyncConfig(fuse=False), DelayedConfig()]
    # blocking where a step reduces one fused gradient; the thread where there are many to schedule
    assert [auto.resolve_progress(s) for s in strategies] == ["thread", "blocking", "thread", "blocking"]
    assert MPIBackendConfig(progress="test").resolve_progress(LayerwiseConfig()) == "test"  # a choice stays
