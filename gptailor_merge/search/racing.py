"""Paired racing: a challenger is compared with the incumbent example by example, not by two means.

Every candidate is scored on the same ordered examples, so the difference between two candidates'
per-example losses has far less variance than either score (SMAC's intensification and irace's
racing rest on this). `paired_values` turns one rung's scores into, per objective task, per-example
`loss` and `weight` such that the task's term of the objective (its log ratio against the dense
base) is `const - sum(loss) / sum(weight)`: perplexity `nll_sum` over `tokens`, multiple-choice
likelihood the gold choice's cross-entropy, multiple-choice accuracy its linearised log ratio.
`paired_difference` gives the challenger-minus-incumbent objective with its standard error, and
`keeps_racing` is the rule: a challenger goes on to more examples until it is clearly worse
(`search.race_z`); no rung is smaller than `search.min_rung_examples` (`SearchConfig.rungs`).
No torch, no nevergrad.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gptailor_merge.scoring.objectives import ABOVE_CHANCE_FLOOR

PairedValues = dict[str, dict[str, list[float]]]  # task -> {"loss": [...], "weight": [...]}


def paired_values(score, reference, tasks, counted: Sequence[str], *, mc: str, metric: str = "acc"
                  ) -> PairedValues:
    """Per counted task, the per-example loss and weight of `score` (see the module docstring);
    `reference` (the dense base at the same budget) scales the accuracy form only."""
    kinds = {t.name: t for t in tasks}
    out: PairedValues = {}
    for name in counted:
        per = score.tasks[name].per_example
        if kinds[name].kind == "perplexity":
            out[name] = {"loss": list(per["nll_sum"]), "weight": list(per["tokens"])}
        elif mc == "likelihood":
            out[name] = {"loss": list(per["choice_nll"]), "weight": [1.0] * len(per["choice_nll"])}
        else:
            gap = max(reference.tasks[name].metrics[metric] - kinds[name].chance, ABOVE_CHANCE_FLOOR)
            out[name] = {"loss": [-v / gap for v in per[metric]], "weight": [1.0] * len(per[metric])}
    return out


@dataclass(frozen=True)
class PairedDiff:
    """Challenger minus incumbent in mean log ratio (> 0: the challenger is better), its standard
    error, and the examples per task it rests on."""

    diff: float
    se: float
    n_examples: int

    def upper(self, z: float) -> float:
        return self.diff + z * self.se

    def lower(self, z: float) -> float:
        return self.diff - z * self.se


def paired_difference(challenger: Mapping[str, Mapping[str, Sequence[float]]],
                      incumbent: Mapping[str, Mapping[str, Sequence[float]]]) -> PairedDiff | None:
    """The paired difference on the challenger's examples (a prefix of the incumbent's: the
    incumbent was scored on at least as many), or None when the two share no task."""
    tasks = [t for t in challenger if t in incumbent]
    if not tasks:
        return None
    diffs, variances, sizes = [], [], []
    for task in tasks:
        loss_c, weight = challenger[task]["loss"], challenger[task]["weight"]
        n = len(loss_c)
        loss_i = incumbent[task]["loss"][:n]
        if len(loss_i) < n:
            return None  # the incumbent has fewer examples: nothing paired to compare
        total = float(sum(weight))
        if total <= 0:
            continue
        deltas = [a - b for a, b in zip(loss_i, loss_c, strict=True)]  # > 0: challenger lower loss
        d = sum(deltas) / total
        spread = sum((delta - d * w) ** 2 for delta, w in zip(deltas, weight, strict=True))
        variances.append(spread / total**2 * (n / (n - 1)) if n > 1 else math.inf)
        diffs.append(d)
        sizes.append(n)
    if not diffs:
        return None
    k = len(diffs)
    return PairedDiff(sum(diffs) / k, math.sqrt(sum(variances)) / k, min(sizes))


def keeps_racing(challenger: Mapping, incumbent: Mapping | None, z: float) -> bool:
    """Whether a challenger goes on to the next rung: yes without an incumbent to pair with, else
    unless it is clearly worse (its interval's upper end below zero)."""
    if incumbent is None:
        return True
    paired = paired_difference(challenger, incumbent)
    return paired is None or paired.upper(z) >= 0.0
