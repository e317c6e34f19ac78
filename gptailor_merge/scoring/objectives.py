"""The yardstick: a pruned model's scores against a reference (dense) model's, as log ratios.

Per task a log ratio (perplexity: log(ppl_ref / ppl), minus the change in NLL per token; multiple
choice: log((acc - chance) / (acc_ref - chance)), counted only where the reference beats chance by
`chance_z` binomial standard errors, with acc - chance floored so a collapse costs a large finite
penalty). `retention_sym` is exp(mean log ratio): a geometric mean, so a specialist that wins one
task 3x and loses two 3x scores below 1, and on perplexity tasks A vs B = 1 / (B vs A).

`mc="likelihood"` swaps the multiple-choice ratio for the change in the gold choice's
cross-entropy over the choices (`choice_nll_ref - choice_nll`, in nats like the perplexity
tasks): the search's objective, because accuracy on a search split of ~100 examples moves in
flips of 1/n that swamp the differences between neighbouring genomes. Reported numbers use
accuracy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gptailor_merge.core.errors import TaskError
from gptailor_merge.scoring.evaluate import Score
from gptailor_merge.scoring.task import Task

logger = logging.getLogger(__name__)

# acc - chance is floored here (in accuracy units): a model at or below chance on a task the
# reference solves scores log(0.01 / gap), a large finite penalty instead of -inf
ABOVE_CHANCE_FLOOR = 0.01
DEFAULT_CHANCE_Z = 2.0
McObjective = Literal["accuracy", "likelihood"]


def _metric(score: Score, task: str, metric: str, which: str) -> float:
    if task not in score.tasks:
        raise TaskError(f"the {which} score has no task {task!r} (it has {sorted(score.tasks)}); "
                        f"score both models on the same tasks.")
    return score.tasks[task].metrics[metric]


def beats_chance(acc: float, chance: float, n: float, z: float) -> bool:
    """acc is above chance by more than `z` binomial standard errors sqrt(c (1 - c) / n)."""
    return acc - chance > z * math.sqrt(chance * (1.0 - chance) / max(n, 1.0))


def chance_level_tasks(score: Score, tasks: Sequence[Task], *, z: float, metric: str = "acc"
                       ) -> list[str]:
    """Multiple-choice tasks on which `score` (the dense base's) does not beat chance by `z`
    binomial standard errors: there a candidate's accuracy differs from another's by noise, so
    they are reported but not counted."""
    out = []
    for task in tasks:
        if task.kind != "multiple_choice":
            continue
        acc = _metric(score, task.name, metric, "reference")
        if not beats_chance(acc, task.chance, score.tasks[task.name].metrics["n"], z):
            out.append(task.name)
    return out


def counted_tasks(reference: Score, tasks: Sequence[Task], *, metric: str = "acc",
                  chance_z: float = DEFAULT_CHANCE_Z) -> list[str]:
    """The tasks the yardstick counts: every perplexity task, and the multiple-choice tasks on
    which the reference beats chance by `chance_z` standard errors."""
    at_chance = set(chance_level_tasks(reference, tasks, z=chance_z, metric=metric))
    return [t.name for t in tasks if t.name not in at_chance]


def mc_log_ratio(acc: float, acc_ref: float, chance: float) -> float:
    """log((acc - c) / (acc_ref - c)) with acc - c floored; NaN where the reference is at chance."""
    gap_ref = acc_ref - chance
    if gap_ref <= 0:
        return math.nan
    return math.log(max(acc - chance, ABOVE_CHANCE_FLOOR) / gap_ref)


def _nll_gain(score: Score, reference: Score, task: str, key: str) -> float:
    nll = _metric(score, task, key, "pruned")
    return _metric(reference, task, key, "reference") - nll if math.isfinite(nll) else -math.inf


def log_ratios(score: Score, reference: Score, tasks: Sequence[Task], *, metric: str = "acc",
               mc: McObjective = "accuracy") -> dict[str, float]:
    """Per task, the log ratio against the reference (higher is better, 0 = as good); `mc`
    picks the multiple-choice form (module docstring)."""
    out = {}
    for task in tasks:
        if task.kind == "perplexity":
            out[task.name] = _nll_gain(score, reference, task.name, "nll")
        elif mc == "likelihood":
            out[task.name] = _nll_gain(score, reference, task.name, "choice_nll")
        else:
            out[task.name] = mc_log_ratio(_metric(score, task.name, metric, "pruned"),
                                          _metric(reference, task.name, metric, "reference"),
                                          task.chance)
    return out


@dataclass(frozen=True)
class Retention:
    """The yardstick of one model against a reference on one split."""

    retention_sym: float  # exp(mean log ratio) over the counted tasks
    retention_sym_text: float | None  # the same over the perplexity tasks alone
    worst_task: tuple[str, float] | None  # (task, exp(log ratio)) of the lowest counted task
    log_ratios: dict[str, float]  # every task, counted or not
    counted: tuple[str, ...]

    @property
    def mean_log_ratio(self) -> float:
        return math.log(self.retention_sym) if self.retention_sym > 0 else -math.inf

    def to_dict(self) -> dict:
        def r(v: float) -> float | None:
            return round(v, 6) if v is not None and math.isfinite(v) else None

        return {
            "retention_sym": r(self.retention_sym),
            "retention_sym_text": r(self.retention_sym_text),
            "worst_task": ({"task": self.worst_task[0], "ratio": r(self.worst_task[1])}
                           if self.worst_task else None),
            "log_ratios": {k: r(v) for k, v in self.log_ratios.items()},
            "counted_tasks": list(self.counted),
        }


def _geo(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.exp(mean) if mean < 700 else math.inf


def symmetric_retention(score: Score, reference: Score, tasks: Sequence[Task], *,
                        metric: str = "acc", chance_z: float = DEFAULT_CHANCE_Z,
                        counted: Sequence[str] | None = None,
                        mc: McObjective = "accuracy") -> Retention:
    """`retention_sym`, `retention_sym_text` and `worst_task` of `score` against `reference`.
    `counted` fixes the counted tasks (a search decides them once, at its top rung); by default
    they are `counted_tasks(reference, ...)`."""
    ratios = log_ratios(score, reference, tasks, metric=metric, mc=mc)
    names = list(counted) if counted is not None else counted_tasks(
        reference, tasks, metric=metric, chance_z=chance_z)
    names = [n for n in names if n in ratios and not math.isnan(ratios[n])]
    if not names:
        raise TaskError("the yardstick counts no task: every multiple-choice task is at chance for "
                        "the reference and there is no perplexity task. Add a perplexity task or "
                        "more examples.")
    kinds = {t.name: t.kind for t in tasks}
    text = [ratios[n] for n in names if kinds[n] == "perplexity"]
    worst = min(names, key=lambda n: ratios[n])
    return Retention(
        retention_sym=_geo([ratios[n] for n in names]),
        retention_sym_text=_geo(text) if text else None,
        worst_task=(worst, math.exp(ratios[worst])),
        log_ratios=ratios,
        counted=tuple(names),
    )


def mean_of_ratios(score: Score, reference: Score, tasks: Sequence[Task], *, metric: str = "acc"
                   ) -> float:
    """The old arithmetic mean of score / reference (ppl_ref / ppl): secondary, never ranked on;
    it rewards specialisation (a 3x win on one task outweighs 3x losses on two)."""
    values = []
    for task in tasks:
        if task.kind == "perplexity":
            values.append(_metric(reference, task.name, "ppl", "reference")
                          / _metric(score, task.name, "ppl", "pruned"))
        else:
            ref = _metric(reference, task.name, metric, "reference")
            values.append(_metric(score, task.name, metric, "pruned") / ref if ref > 0 else math.nan)
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
