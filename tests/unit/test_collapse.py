"""Collapse to chance level: the verdict from per-epoch mean training losses."""
from __future__ import annotations

import math

import pytest

from asyncsgd.collapse import at_chance, chance_loss, detect
from asyncsgd.config import GoogLeNetConfig, LeNetConfig

LN10 = math.log(10)


def test_chance_is_ln_of_the_class_count_counting_auxiliary_heads():
    assert chance_loss(10, LeNetConfig()) == pytest.approx(2.302585, abs=1e-6)
    assert chance_loss(100) == pytest.approx(math.log(100))
    assert chance_loss(10, GoogLeNetConfig(aux_weight=0.3)) == pytest.approx(1.6 * LN10)
    assert chance_loss(10, GoogLeNetConfig(aux_logits=False)) == pytest.approx(LN10)


def test_the_margin_is_one_percent_of_chance():
    assert at_chance(2.2797, LN10) and at_chance(2.31, LN10) and at_chance(7.5, LN10)  # diverged counts too
    assert not at_chance(2.27, LN10)


def test_collapse_after_learning_is_reported_at_its_first_epoch():
    verdict = detect([1.2, 0.7, 2.3026, 2.3026], LN10)
    assert verdict["kind"] == "collapsed" and verdict["epoch"] == 2
    assert "collapsed to chance level" in verdict["message"] and "epoch 2" in verdict["message"]


def test_never_learning_is_reported_from_the_first_epoch():
    assert detect([2.3151], LN10)["kind"] == "never_learned"
    assert detect([2.31, 2.30, 2.305], LN10)["epoch"] == 0
    # a slow start that then learns is not (the verdict is about the run so far)
    assert detect([2.31, 1.9], LN10) is None


def test_learning_runs_and_nonfinite_runs_are_not_collapsed():
    assert detect([], LN10) is None
    assert detect([1.0, 0.5, 0.4], LN10) is None
    assert detect([1.0, float("nan")], LN10) is None  # train.nonfinite's business
