"""Paired bootstrap intervals of the yardstick: is model A better than model B on held-out data?

Resamples each counted task's held-out examples with replacement, the same draw for A, B and the
reference, and recomputes the difference in mean log ratio (`scoring.objectives`) per draw; the
interval is the 2.5 / 97.5 percentiles. Needs the per-example values `TaskScore.per_example`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gptailor_merge.core.errors import TaskError
from gptailor_merge.scoring.evaluate import Score
from gptailor_merge.scoring.objectives import ABOVE_CHANCE_FLOOR
from gptailor_merge.scoring.task import Task

DEFAULT_BOOTSTRAP = 2000


def _values(score: Score, task: Task, metric: str, which: str) -> dict[str, np.ndarray]:
    ts = score.tasks.get(task.name)
    keys = ("nll_sum", "tokens") if task.kind == "perplexity" else (metric,)
    if metric == "choice_nll" and task.kind == "multiple_choice":
        keys = ("choice_nll",)
    if ts is None or any(k not in ts.per_example for k in keys):
        raise TaskError(f"the {which} score of {task.name!r} has no per-example values; score it "
                        f"with scoring.evaluate_model (held-out rows keep them) to get intervals.")
    return {k: np.asarray(ts.per_example[k], dtype=np.float64) for k in keys}


def _log_ratio_draws(model: dict, ref: dict, task: Task, metric: str, idx: np.ndarray) -> np.ndarray:
    """(n_boot,) log ratios of one task under the resampled example indices `idx` (n_boot, n)."""
    if task.kind == "perplexity":
        def nll(v: dict) -> np.ndarray:
            return v["nll_sum"][idx].sum(axis=1) / np.maximum(v["tokens"][idx].sum(axis=1), 1.0)
        return nll(ref) - nll(model)
    if metric == "choice_nll":  # the likelihood objective: the change in the gold choice's cross-entropy
        return ref[metric][idx].mean(axis=1) - model[metric][idx].mean(axis=1)
    acc = model[metric][idx].mean(axis=1)
    gap_ref = ref[metric][idx].mean(axis=1) - task.chance
    gap = np.maximum(acc - task.chance, ABOVE_CHANCE_FLOOR)
    # a draw where the reference falls to chance has no ratio; floor it like the model's gap
    return np.log(gap / np.maximum(gap_ref, ABOVE_CHANCE_FLOOR))


def paired_bootstrap(a: Score, b: Score, reference: Score, tasks: Sequence[Task],
                     counted: Sequence[str], *, metric: str = "acc",
                     n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, mc: str = "accuracy") -> dict:
    """`{"diff", "ci95": [lo, hi], "n_boot"}`: mean log ratio of A minus B over `counted` tasks,
    i.e. log(retention_sym(A) / retention_sym(B)); > 0 means A is better. `mc="likelihood"` uses
    the search objective's multiple-choice form (`scoring.objectives`) instead of accuracy."""
    if mc == "likelihood":
        metric = "choice_nll"
    chosen = [t for t in tasks if t.name in set(counted)]
    if not chosen:
        raise TaskError("paired_bootstrap needs at least one counted task.")
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n_boot)
    point = 0.0
    for task in chosen:
        va, vb, vr = (_values(s, task, metric, w) for s, w in ((a, "first"), (b, "second"),
                                                                (reference, "reference")))
        n = len(next(iter(vr.values())))
        if any(len(next(iter(v.values()))) != n for v in (va, vb)):
            raise TaskError(f"{task.name!r}: the two models were scored on different numbers of "
                            f"examples; score them on the same held-out examples.")
        full = np.arange(n)[None, :]
        idx = rng.integers(0, n, size=(n_boot, n))
        point += float(_log_ratio_draws(va, vr, task, metric, full)[0]
                       - _log_ratio_draws(vb, vr, task, metric, full)[0])
        diffs += _log_ratio_draws(va, vr, task, metric, idx) - _log_ratio_draws(vb, vr, task, metric, idx)
    k = len(chosen)
    point, diffs = point / k, diffs / k
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": round(point, 6), "ci95": [round(float(lo), 6), round(float(hi), 6)],
            "n_boot": n_boot, "tasks": [t.name for t in chosen]}


SKILL_Z = 1.96
"""A skill is `lost` where its accuracy drop exceeds this many paired standard errors: a loss the
examples resolve. `fell` (one SE) is reported beside it; with four counted tasks, one of them falls
by one SE by chance about half the time, so one SE names a risk but cannot decide."""


def skill_changes(a: Score, b: Score, tasks: Sequence[Task], counted: Sequence[str], *,
                  metric: str = "acc") -> list[dict]:
    """Per counted multiple-choice task, A's accuracy minus B's on the same examples with the paired
    standard error (sd of the per-example differences / sqrt(n)): where an overall gain hides a lost
    skill. `fell`: the task dropped by more than that standard error; `lost`: by more than
    `SKILL_Z` of them."""
    changes, counted = [], set(counted)
    for task in tasks:
        if task.kind != "multiple_choice" or task.name not in counted:
            continue
        va, vb = (_values(s, task, metric, w)[metric] for s, w in ((a, "first"), (b, "second")))
        if len(va) != len(vb):
            raise TaskError(f"{task.name!r}: the two models were scored on different numbers of examples.")
        d = va - vb
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
        diff = float(d.mean())
        changes.append({"task": task.name, "diff": round(diff, 6), "se": round(se, 6), "n": len(d),
                        "fell": diff < -se, "lost": diff < -SKILL_Z * se})
    return changes


def interval_text(result: dict | None) -> str:
    """`+0.123 [+0.050, +0.190]`, or `-` when there is none."""
    if not result or result.get("diff") is None or not math.isfinite(result["diff"]):
        return "-"
    lo, hi = result["ci95"]
    return f"{result['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
