"""Training that collapsed to chance: a finite loss that says the network has stopped learning.

With C classes, a network that predicts the uniform distribution (or the class
prior of a balanced set) has cross-entropy ln C, the *chance level*. A run whose
training loss sits there for a whole epoch after having been below it has
collapsed (stale gradients with heavy momentum do this: issue 14's delayed K=1
at momentum 0.9 trained to 2.30 = ln 10 and stayed); one that is there from the
first epoch on never started learning. Neither produces NaN, so the non-finite
check does not see them.

The judgement uses the epoch's mean training loss over every rank's samples
(already reduced for the metrics), so every rank reaches the same verdict at
the same epoch without another collective, and ``train.on_collapse=stop`` can
stop them all together.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

# An epoch is "at chance" when its mean training loss is at least (1 - MARGIN) * chance: 0.023 nats
# below ln 10. A network that is learning is well below that within its first epoch; a collapsed
# one sits within a few thousandths of ln C (or above it, when it diverged without overflowing).
MARGIN = 0.01


class TrainingCollapsed(RuntimeError):
    """The training loss sat at chance level for a whole epoch and train.on_collapse=stop."""


def chance_loss(num_classes: int, model_cfg=None) -> float:
    """Cross-entropy of a uniform prediction, counting auxiliary classifiers (GoogLeNet's) as the loss does."""
    heads = 1.0
    if getattr(model_cfg, "aux_logits", False):
        heads += 2 * float(getattr(model_cfg, "aux_weight", 0.0))  # torchvision's GoogLeNet has two
    return heads * math.log(num_classes)


def at_chance(train_loss: float, chance: float) -> bool:
    return train_loss >= (1.0 - MARGIN) * chance


def detect(epoch_losses: Iterable[float], chance: float) -> Optional[dict]:
    """The first collapse in a run's per-epoch mean training losses (complete epochs, in order), or None.

    ``collapsed``: an epoch at chance after an earlier one below it.
    ``never_learned``: every epoch so far at chance, from the first on.
    """
    below_seen = False
    losses = list(epoch_losses)
    for epoch, loss in enumerate(losses):
        if not math.isfinite(loss):
            return None  # a NaN/inf run is the non-finite check's business (train.nonfinite)
        if at_chance(loss, chance):
            if below_seen:
                return _verdict("collapsed", epoch, loss, chance)
        else:
            below_seen = True
    if losses and not below_seen:
        return _verdict("never_learned", 0, losses[0], chance)
    return None


def _verdict(kind: str, epoch: int, loss: float, chance: float) -> dict:
    what = ("collapsed to chance level" if kind == "collapsed" else "never left chance level")
    return {"kind": kind, "epoch": epoch, "train_loss": loss, "chance_loss": chance,
            "message": f"training {what}: mean training loss {loss:.4f} in epoch {epoch} "
                       f"(chance = ln(classes) = {chance:.4f})"}
