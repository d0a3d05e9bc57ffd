"""The learning-rate schedule: a pure function of the gradient's step."""
from __future__ import annotations

import math

import pytest

from asyncsgd.checkpoint import config_differences
from asyncsgd.lr_schedule import make_lr_schedule


def test_constant_is_one_everywhere():
    f = make_lr_schedule("constant", 10)
    assert [f(s) for s in (0, 5, 9, 100)] == [1.0] * 4


def test_cosine_falls_from_one_to_zero_over_the_run():
    f = make_lr_schedule("cosine", 100)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5)
    assert f(25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert 0 < f(99) < 1e-3
    assert f(100) == pytest.approx(0.0) and f(150) == pytest.approx(0.0)  # a drain past the end stays at 0
    assert all(f(s) >= f(s + 1) for s in range(100))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        make_lr_schedule("step", 10)


def test_resume_sees_a_changed_length_only_under_a_schedule():
    # cosine's rates depend on the number of steps; a constant rate does not
    assert config_differences({"train": {"lr_schedule": "cosine", "epochs": 2}},
                              {"train": {"lr_schedule": "cosine", "epochs": 3}}) == ["train.epochs: 2 -> 3"]
    assert config_differences({"train": {"lr_schedule": "constant", "epochs": 2}},
                              {"train": {"lr_schedule": "constant", "epochs": 3}}) == []


def test_warmup_ramps_up_linearly_then_follows_the_schedule():
    f = make_lr_schedule("constant", 100, warmup_steps=4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    g, cosine = make_lr_schedule("cosine", 100, warmup_steps=10), make_lr_schedule("cosine", 100)
    assert g(4) == pytest.approx(0.5 * cosine(4))
    assert [g(s) for s in range(10, 100)] == [cosine(s) for s in range(10, 100)]
