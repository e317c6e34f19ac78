"""Successive halving over the example budget: who goes on to more examples, and what nevergrad is told."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def promoted(rung_losses: Sequence[float], loss: float, eta: int) -> bool:
    """ASHA rule: go on to the next rung while in the top 1/eta of this rung's finished losses."""
    previous = [*rung_losses, loss]
    cutoff = np.quantile(previous, 1.0 / eta) if len(previous) > 1 else math.inf
    return loss <= cutoff


def told_loss(loss: float, n_examples: int, rung_losses: dict[int, list[float]], top: int) -> float:
    """The loss nevergrad is told: a full-fidelity loss as it is; a trial stopped at a lower rung
    gets the top rung's loss at the same quantile (its rank among that rung's losses), so a lucky
    3-example score never stands beside 90-example ones as if it were one. With no top-rung loss
    yet, its own."""
    if n_examples == top or not rung_losses.get(top):
        return loss
    own = np.asarray(rung_losses[n_examples] or [loss])
    q = float(np.mean(own <= loss))
    return float(np.quantile(np.asarray(rung_losses[top]), q))
