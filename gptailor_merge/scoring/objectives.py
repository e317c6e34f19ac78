"""Retention: a pruned model's scores relative to a reference (dense) model's, higher is better.

Multiple choice: acc / acc_ref (or above chance: (acc - chance) / (acc_ref - chance)); perplexity:
ppl_ref / ppl, so 1.0 means as good as the reference. Takes two `Score`s, returns floats; an
undefined ratio (reference at zero or at chance) is NaN with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from gptailor_merge.errors import TaskError
from gptailor_merge.scoring.evaluate import Score
from gptailor_merge.scoring.tasks import Task

logger = logging.getLogger(__name__)


def _metric(score: Score, task: str, metric: str, which: str) -> float:
    if task not in score.tasks:
        raise TaskError(f"the {which} score has no task {task!r} (it has {sorted(score.tasks)}); "
                        f"score both models on the same tasks.")
    return score.tasks[task].metrics[metric]


_WARNED: set[str] = set()  # tasks already warned about: a search scores the same reference often


def _ratio(numerator: float, denominator: float, task: str) -> float:
    if denominator <= 0 or not math.isfinite(denominator) or not math.isfinite(numerator):
        log = logger.debug if task in _WARNED else logger.warning
        _WARNED.add(task)
        log("retention of %s is undefined (%s / %s); using NaN", task, numerator,
            denominator)
        return math.nan
    return numerator / denominator


def retention(score: Score, reference: Score, tasks: Sequence[Task], *, metric: str = "acc"
              ) -> dict[str, float]:
    """Per task: acc / acc_ref (`metric` picks acc or acc_norm) or ppl_ref / ppl."""
    result = {}
    for task in tasks:
        if task.kind == "perplexity":
            ppl, ppl_ref = (_metric(s, task.name, "ppl", w)
                            for s, w in ((score, "pruned"), (reference, "reference")))
            result[task.name] = _ratio(ppl_ref, ppl, task.name)
        else:
            acc, acc_ref = (_metric(s, task.name, metric, w)
                            for s, w in ((score, "pruned"), (reference, "reference")))
            result[task.name] = _ratio(acc, acc_ref, task.name)
    return result


def mean_retention(score: Score, reference: Score, tasks: Sequence[Task], *, metric: str = "acc"
                   ) -> float:
    """The mean of `retention` over tasks (NaN if any task's is undefined)."""
    values = list(retention(score, reference, tasks, metric=metric).values())
    if not values:
        raise TaskError("retention needs at least one task.")
    return sum(values) / len(values)


def retention_above_chance(score: Score, reference: Score, tasks: Sequence[Task], *,
                           metric: str = "acc") -> dict[str, float]:
    """Per multiple-choice task: (acc - chance) / (acc_ref - chance); perplexity tasks are skipped."""
    result = {}
    for task in tasks:
        if task.kind != "multiple_choice":
            continue
        acc = _metric(score, task.name, metric, "pruned")
        acc_ref = _metric(reference, task.name, metric, "reference")
        result[task.name] = _ratio(acc - task.chance, acc_ref - task.chance, task.name)
    return result


def chance_level_tasks(score: Score, tasks: Sequence[Task], *, z: float, metric: str = "acc"
                       ) -> list[str]:
    """Multiple-choice tasks on which `score` (the dense base's) does not beat chance by `z`
    binomial standard errors, sqrt(chance * (1 - chance) / n): there a candidate's accuracy
    differs from another's by noise, so a search that optimizes it fits noise."""
    out = []
    for task in tasks:
        if task.kind != "multiple_choice":
            continue
        acc, n = _metric(score, task.name, metric, "reference"), score.tasks[task.name].metrics["n"]
        if acc - task.chance <= z * math.sqrt(task.chance * (1.0 - task.chance) / n):
            out.append(task.name)
    return out
