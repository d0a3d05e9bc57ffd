"""Every new dataset and model option composes from its YAML; bad values name the key."""
from __future__ import annotations

import pytest

from asyncsgd.config import (
    CIFAR10Config,
    CIFAR100Config,
    ConfigError,
    FashionMNISTConfig,
    GoogLeNetConfig,
    ImageNetConfig,
    MNISTConfig,
)
from asyncsgd.validate import compose_jobs


def compose(*overrides):
    return compose_jobs(list(overrides), multirun=False)[0]


@pytest.mark.parametrize(
    "choice, schema",
    [("mnist", MNISTConfig), ("fashion_mnist", FashionMNISTConfig), ("cifar10", CIFAR10Config),
     ("cifar100", CIFAR100Config), ("imagenet", ImageNetConfig)],
)
def test_dataset_options_compose(choice, schema, monkeypatch):
    monkeypatch.delenv("ASYNCSGD_DATA", raising=False)
    cfg = compose(f"dataset={choice}")
    assert type(cfg.dataset) is schema and cfg.dataset.root is None
    assert cfg.dataset.workers == (2 if choice == "imagenet" else 0)
    if choice != "imagenet":
        assert cfg.dataset.download is False
        monkeypatch.setenv("ASYNCSGD_DATA", "/data/sets")
        assert compose(f"dataset={choice}").dataset.root == "/data/sets"  # the default root
        assert compose(f"dataset={choice}", "dataset.root=/elsewhere").dataset.root == "/elsewhere"


@pytest.mark.parametrize("choice", ["alexnet", "googlenet", "resnet18", "resnet50", "vgg11"])
def test_model_options_compose(choice):
    model = compose(f"model={choice}").model
    assert model.name == choice
    assert getattr(model, "stem", "auto") == "auto"


def test_googlenet_knobs():
    model = compose("model=googlenet", "model.aux_logits=false", "model.aux_weight=0.5").model
    assert isinstance(model, GoogLeNetConfig) and model.aux_logits is False and model.aux_weight == 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=resnet18", "model.stem=tiny"], "model.stem='tiny' is not allowed; choose one of auto, imagenet, small"),
        (["model=alexnet", "model.dropout=1.5"], "model.dropout=1.5 must be in [0, 1)"),
        (["model=googlenet", "model.aux_weight=-1"], "model.aux_weight=-1.0 must be >= 0"),
        (["model=vgg11", "model.stem=small"], "model.stem is not a config key"),
        (["dataset=imagenet", "dataset.size=0"], "dataset.size=0 must be >= 1"),
        (["dataset=imagenet", "dataset.size=224", "dataset.val_resize=200"], "dataset.val_resize=200 must be >="),
        (["dataset=cifar10", "dataset.workers=-1"], "dataset.workers=-1 must be >= 0"),
        (["dataset=mnist", "dataset.augment=true"], "dataset.augment is not a config key"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        compose(*overrides)
    assert message in str(info.value)
