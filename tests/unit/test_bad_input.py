"""The bad-input round-up (docs/errors.md): every config key with a bad value gives one line naming it.

``check_all`` is what ``asyncsgd-run`` runs before any worker starts; a
ConfigError from it is printed as ``asyncsgd-run: error: <line>`` with exit
status 2 (test_cli_exits_2_with_one_line_and_writes_no_run and the tests below
that go through the real CLI show that path).
"""
from __future__ import annotations

import pytest

from asyncsgd.config import ConfigError
from asyncsgd.validate import check_all

from ..conftest import run_cli

G = ["backend=gloo"]  # keeps the MPI checks out of cases about other keys

CASES = [
    # dataset
    ("dataset.shuffle=maybe", "dataset.shuffle='maybe' is not a valid bool"),
    ("dataset.subset=0", "dataset.subset=0 must be >= 1"),
    ("dataset.subset=5000", "dataset.subset=5000 is larger than the 1437 training samples"),
    ("dataset.test_subset=0", "dataset.test_subset=0 must be >= 1"),
    ("dataset.test_subset=400", "dataset.test_subset=400 is larger than the 360 test samples"),
    ("dataset.target_acc=1.5", "dataset.target_acc=1.5 must be in (0, 1]"),
    ("dataset.workers=-1", "dataset.workers=-1 must be >= 0"),
    ("dataset.test_fraction=1.0", "dataset.test_fraction=1.0 must be in (0, 1)"),
    ("dataset.split_seed=x", "dataset.split_seed='x' is not a valid int"),
    ("train.batch_size=800", "train.batch_size=800 x world_size=2 is larger than the 1437 training samples"),
    ("dataset=synthetic dataset.shape=[0,4,4]", "dataset.shape=[0, 4, 4] must be [features] or [channels, height"),
    ("dataset=synthetic dataset.num_classes=1", "dataset.num_classes=1 must be >= 2"),
    ("dataset=synthetic dataset.num_train=0", "dataset.num_train=0 must be >= 1"),
    ("dataset=synthetic dataset.num_test=0", "dataset.num_test=0 must be >= 1"),
    ("dataset=synthetic dataset.noise=-1", "dataset.noise=-1.0 must be >= 0"),
    ("dataset=imagenet dataset.size=0", "dataset.size=0 must be >= 1"),
    ("dataset=imagenet dataset.val_resize=10", "dataset.val_resize=10 must be >= dataset.size=224"),
    ("dataset=imagenet dataset.min_scale=0", "dataset.min_scale=0.0 must be in (0, 1]"),
    ("dataset=cifar10 dataset.augment=maybe", "dataset.augment='maybe' is not a valid bool"),
    ("dataset=mnist dataset.download=maybe", "dataset.download='maybe' is not a valid bool"),
    # model
    ("model.hidden=[0]", "model.hidden=[0] must be positive sizes"),
    ("model=resnet18 model.stem=tiny", "model.stem='tiny' is not allowed; choose one of auto, imagenet, small"),
    ("model=alexnet model.dropout=1.0", "model.dropout=1.0 must be in [0, 1)"),
    ("model=googlenet model.aux_weight=-1", "model.aux_weight=-1.0 must be >= 0"),
    ("model=googlenet model.dropout_aux=2", "model.dropout_aux=2.0 must be in [0, 1)"),
    ("model=vgg11 model.batch_norm=maybe", "model.batch_norm='maybe' is not a valid bool"),
    # backend
    ("backend.timeout_s=0", "backend.timeout_s=0.0 must be > 0"),
    ("backend.compute_nice=-1", "backend.compute_nice=-1 must be in [0, 19]"),
    ("backend.compute_nice=20", "backend.compute_nice=20 must be in [0, 19]"),
    ("backend.master_port=x", "backend.master_port='x' is not a valid int"),
    # strategy
    ("strategy.fuse=maybe", "strategy.fuse='maybe' is not a valid bool"),
    ("strategy=delayed strategy.drain=maybe", "strategy.drain='maybe' is not a valid bool"),
    ("strategy=ddp strategy.bucket_mb=0", "strategy.bucket_mb=0.0 must be > 0"),
    ("strategy=delayed strategy.compensation=nesterov",
     "strategy.compensation='nesterov' is not allowed; use none or rules joined by + from momentum, lr, spike, dc, predict"),
    ("strategy=delayed strategy.dc_lambda=-1", "strategy.dc_lambda=-1.0 must be >= 0"),
    ("strategy=delayed strategy.dc_beta=1", "strategy.dc_beta=1.0 must be in [0, 1)"),
    ("strategy=sync strategy.compensation=dc", "strategy.compensation is not a config key"),
    # launcher
    ("launcher.grace_s=0", "launcher.grace_s=0.0 must be > 0"),
    ("launcher=cluster", "launcher=cluster is not an option; choose one of emulated, external, local"),
    # train
    ("train.max_steps=-1", "train.max_steps=-1 must be >= 0 or null"),
    ("train.momentum=-0.5", "train.momentum=-0.5 must be >= 0"),
    ("train.weight_decay=-1", "train.weight_decay=-1.0 must be >= 0"),
    ("train.threads=0", "train.threads=0 must be >= 1 or null"),
    ("train.eval_every_epochs=-1", "train.eval_every_epochs=-1 must be >= 0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1 must be >= 0"),
    ("train.log_every_steps=0", "train.log_every_steps=0 must be >= 1"),
    ("train.grad_clip_norm=0", "train.grad_clip_norm=0.0 must be > 0 or null"),
    ("train.measure_comm=maybe", "train.measure_comm='maybe' is not a valid bool"),
    ("train.nonfinite=ignore", "train.nonfinite='ignore' is not allowed; choose one of stop, skip"),
    ("train.on_collapse=ignore", "train.on_collapse='ignore' is not allowed; choose one of warn, stop"),
    ("train.lr_schedule=step", "train.lr_schedule='step' is not allowed; choose one of constant, cosine"),
    ("train.lr_warmup_steps=-1", "train.lr_warmup_steps=-1 must be >= 0"),
    ("train.eval_every_steps=-1", "train.eval_every_steps=-1 must be >= 0"),
    # fault, checkpoint, resume
    ("fault.step=-1", "fault.step=-1 must be >= 0"),
    ("fault.kind=segv", "fault.kind='segv' is not allowed; choose one of raise, kill, nan"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps=-1 must be >= 0"),
    ("checkpoint.every_epochs=-1", "checkpoint.every_epochs=-1 must be >= 0"),
    ("checkpoint.keep=0", "checkpoint.keep=0 must be >= 1"),
    ("resume.allow_changes=maybe", "resume.allow_changes='maybe' is not a valid bool"),
    # top level
    ("seed=x", "seed='x' is not a valid int"),
    ("progress_bar=maybe", "progress_bar='maybe' is not a valid bool"),
    ("timeline=maybe", "timeline='maybe' is not a valid bool"),
    ("timeline_first_step=-1", "timeline_first_step=-1 must be >= 0"),
    ("timeline_steps=0", "timeline_steps=0 must be >= 1"),
    ("timeline_all_ranks=maybe", "timeline_all_ranks='maybe' is not a valid bool"),
]


@pytest.mark.parametrize("override, expected", CASES, ids=[c[0] for c in CASES])
def test_every_key_with_a_bad_value_is_one_line_naming_it(override, expected):
    with pytest.raises(ConfigError) as info:
        check_all([*G, *override.split()], multirun=False)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, expected", [
    (["dataset.subset=5000"], "dataset.subset=5000 is larger than the 1437 training samples"),
    (["hydra.run.dir=AFILE/run"], "is not a directory"),
    (["launcher.grace_s=0"], "launcher.grace_s=0.0 must be > 0"),
])
def test_cli_exit_2_one_line(workdir, args, expected):
    (workdir / "AFILE").write_text("a file, not a directory")
    result = run_cli([*G, *args], cwd=workdir, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncsgd-run: error: ") and expected in lines[0], lines
    assert not (workdir / "results").exists()
