"""The winner, chosen on validation: the search's best few genomes against the baseline seeds.

The largest of many noisy full-fidelity reads is biased upward (the winner's curse), so the search
split never picks the returned model. The best `finalists` distinct full-fidelity genomes the optimizer
proposed (never a seed), every baseline seed (a single-model removal set with the base's layers)
and the best `search_seeds` other seeds of the search (merges or single fine-tunes on a removal
order: the best of them is what a seeds-only run would return) are re-scored on the validation
split, which neither the search nor any baseline read, and ranked there on the reported yardstick
(`retention_sym`, accuracy on multiple choice: what the held-out claim measures; the search's
likelihood objective is recorded beside it). The best searched genome is returned only where the
evidence says it beats the incumbent seed (the best baseline seed, or a search seed that beat it
on the same evidence): its paired bootstrap interval on the yardstick is above zero,
or (with the likelihood objective) it is not below the seed on the yardstick and its paired interval
on the objective is above zero. Accuracy flips one example at a time, so a real gain of a few
points on ~100 examples per task rarely clears zero on the yardstick alone; the gold choice's
cross-entropy moves on every example and resolves it, while the yardstick's point estimate keeps a
likelihood gain that costs accuracy from being returned. Otherwise the seed is returned, and the
message says so. Held-out is not touched here.

With a `repair` (a callable that fits the repair of a genome and scores the repaired model on
validation), every contender is also scored repaired, and keeps its repair only where the repaired
model beats its own unrepaired one there with a paired interval above zero; the contest is then
between each contender's kept form, so the search returns the genome whose deliverable is best.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptailor_merge.core.genome import Genome
from gptailor_merge.scoring import counted_tasks, symmetric_retention
from gptailor_merge.scoring.intervals import SKILL_Z, interval_text, paired_bootstrap, skill_changes
from gptailor_merge.search.journal import Trial
from gptailor_merge.search.score_cache import ScoreCache, score_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    """One genome scored on validation: a finalist of the search or a baseline seed."""

    name: str  # "trial 42" or the baseline's name ("greedy_ppl", "shortgpt=angular")
    kind: str  # "finalist" | "seed" (a baseline's removal) | "search seed" (another seed trial)
    genome: Genome
    trial: Trial | None  # its search trial, where the search evaluated it
    objective: float  # exp(mean log ratio) on validation, the search's objective form
    retention_sym: float  # the reported yardstick (accuracy on multiple choice) on validation
    score: object = field(repr=False, compare=False)  # scoring.Score on validation (its kept form)
    repaired: bool = False  # whether its kept form is the repaired model
    repair: dict | None = None  # repaired vs unrepaired on validation, where a repair was tried

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "genome_id": self.genome.genome_id,
                "trial": self.trial.index if self.trial else None,
                "origin": self.trial.origin if self.trial else "seed",
                "search_retention": round(self.trial.retention, 6) if self.trial else None,
                "validation_objective": _r(self.objective),
                "validation_retention_sym": _r(self.retention_sym),
                "repaired": self.repaired, **({"repair": self.repair} if self.repair else {})}

    @property
    def label(self) -> str:
        return f"{self.name}+repair" if self.repaired else self.name

    @property
    def what(self) -> str:
        """How a message names it: "greedy_ppl's removal", "seed trial 4 (a search seed)"."""
        if self.kind == "seed":
            return f"{self.label}'s removal"
        return f"{self.label} (a search seed)" if self.kind == "search seed" else self.label


@dataclass(frozen=True)
class Selection:
    """What the run returns and why: the winner, the best seed, and every contender's scores."""

    winner: Contender
    best_seed: Contender | None  # the best seed of either kind: what a searched winner must beat
    contenders: tuple[Contender, ...]
    vs_best_seed: dict | None  # the best finalist against the best seed, on the yardstick
    source: str  # "search" | "seed": where the returned winner came from
    message: str
    n_examples: int | None
    vs_best_seed_objective: dict | None = None  # the same on the search's likelihood objective
    best_baseline: Contender | None = None  # the best single-model baseline seed (its held-out row)

    def to_dict(self) -> dict:
        return {"winner": self.winner.to_dict(), "source": self.source, "message": self.message,
                "best_seed": self.best_seed.to_dict() if self.best_seed else None,
                "best_baseline": self.best_baseline.to_dict() if self.best_baseline else None,
                "best_finalist_vs_best_seed": self.vs_best_seed,
                "best_finalist_vs_best_seed_objective": self.vs_best_seed_objective,
                "validation_examples": self.n_examples,
                "contenders": [c.to_dict() for c in self.contenders]}


def _r(v: float) -> float | None:
    return round(v, 6) if v is not None and math.isfinite(v) else None


def finalist_trials(trials: Sequence[Trial], top: int, n: int, *, seeds: bool = False,
                    exclude: Sequence[str] = ()) -> list[Trial]:
    """The `n` distinct genomes with the lowest full-fidelity search loss among the optimizer's
    proposals (`seeds`: among the seed trials instead), leaving out the genome ids in `exclude`."""
    best: dict[str, Trial] = {}
    for t in sorted((t for t in trials if t.status == "ok" and t.fidelity == top
                     and (t.origin == "seed") == seeds and t.genome_id not in exclude),
                    key=lambda t: (t.loss, t.index)):
        best.setdefault(t.genome_id, t)
    return list(best.values())[:n]


def seed_genomes(n_layers: int, n_candidates: int, removals: Mapping[str, Sequence[int]]
                 ) -> dict[str, Genome]:
    """Each baseline's removal set with the base's layers, by name; baselines that chose the same
    set share one entry (`shortgpt=angular`)."""
    by_id: dict[str, tuple[list[str], Genome]] = {}
    for name, removed in removals.items():
        g = Genome.base_only(n_layers, n_candidates, removed)
        by_id.setdefault(g.genome_id, ([], g))[0].append(name)
    return {"=".join(names): g for names, g in by_id.values()}


SEARCH_SEEDS = 1
"""Search seeds (beyond the baselines') raced on validation: the best one by search loss is what a
seeds-only run returns, so a searched winner must beat it, not only the single-model baselines."""

RepairScorer = Callable[[Genome, int | None], tuple[Any, dict]]
"""(genome, validation examples) -> (the repaired model's validation Score, a record of the fit)."""


def repair_decision(repaired, unrepaired, reference, tasks, counted: Sequence[str], metric: str,
                    record: dict, *, objective_counted: Sequence[str] = (), mc: str = "accuracy"
                    ) -> tuple[bool, dict]:
    """(keep the repair?, its record), on validation. Kept only where the evidence says the repaired
    model is better, by the same rule as the pick (its paired interval on the yardstick above zero;
    or, with the likelihood objective, not below on the yardstick and its interval on the objective
    above zero), and no counted multiple-choice task lost accuracy by more than `SKILL_Z` paired
    standard errors (`skills`; the message also names every task that fell by one SE): the maps are
    fitted on calibration text, and a text gain can outweigh a lost skill in the overall interval,
    which is not what a user who searched for that skill wants."""
    interval = paired_bootstrap(repaired, unrepaired, reference, tasks, counted, metric=metric)
    better = interval["ci95"][0] > 0
    objective = None
    if not better and mc == "likelihood" and objective_counted:
        objective = paired_bootstrap(repaired, unrepaired, reference, tasks, objective_counted,
                                     metric=metric, mc="likelihood")
        better = interval["diff"] >= 0 and objective["ci95"][0] > 0
    skills = skill_changes(repaired, unrepaired, tasks, counted, metric=metric)
    fell = [c for c in skills if c["fell"]]
    lost = [c for c in fell if c["lost"]]
    keep = better and not lost
    evidence = interval_text(interval) + (f"; on the likelihood objective {interval_text(objective)}"
                                          if objective else "")
    cost = ((" but it lowers " if better and lost else "; it lowers ")
            + ", ".join(f"{c['task']} by {-c['diff']:.3f} (paired SE {c['se']:.3f}"
                        + (f", over {SKILL_Z:g} SE: lost" if c["lost"] else "") + ")" for c in fell)) if fell else ""
    verdict = "beat" if better else "did not beat"
    return keep, {**record, "repaired_vs_unrepaired": interval, "repaired_vs_unrepaired_objective": objective,
                  "kept": keep, "skills": skills,
                  "message": f"the repair {verdict} the unrepaired model on validation ({evidence}){cost}; "
                             f"keeping the {'repaired' if keep else 'unrepaired'} model"}


def evaluator_repair_decision(evaluator, repaired, unrepaired, reference, record: dict
                              ) -> tuple[bool, dict]:
    """`repair_decision` with the evaluator's yardstick tasks, objective tasks and objective."""
    counted = counted_tasks(reference, evaluator.tasks, metric=evaluator.metric,
                            chance_z=evaluator.chance_z or 2.0)
    return repair_decision(repaired, unrepaired, reference, evaluator.tasks, counted, evaluator.metric, record,
                           objective_counted=[t.name for t in evaluator.objective_tasks()],
                           mc=evaluator.mc_objective)


def select_on_validation(evaluator, trials: Sequence[Trial], top: int,
                         seed_removals: Mapping[str, Sequence[int]], *, finalists: int = 3,
                         search_seeds: int = SEARCH_SEEDS, n_examples: int | None = None, progress: bool = False,
                         repair: RepairScorer | None = None, cache: ScoreCache | None = None) -> Selection:
    """Score the finalists and the baseline seeds on validation and pick the winner (module
    docstring). `evaluator` is the search's (`search.Evaluator`); `repair`, where given, also
    scores each contender repaired; `cache` (the run folder's `search.score_cache`) keeps every
    unrepaired validation score, and every repaired one where `repair` has a `cache_tag` (its
    settings), so a run killed here resumes without scoring or fitting those again."""
    from tqdm.auto import tqdm

    cache = cache or ScoreCache(None)

    fam = evaluator.stitcher.family
    by_genome = {t.genome_id: t for t in trials if t.status == "ok"}
    entries: list[tuple[str, str, Genome, Trial | None]] = [
        (f"trial {t.index}", "finalist", Genome.from_dict(t.genome), t)
        for t in finalist_trials(trials, top, finalists)]
    baseline_genomes = seed_genomes(fam.n_layers, fam.n_candidates, seed_removals)
    for name, g in baseline_genomes.items():
        entries.append((name, "seed", g, by_genome.get(g.genome_id)))
    for t in finalist_trials(trials, top, search_seeds, seeds=True,
                             exclude=[g.genome_id for g in baseline_genomes.values()]):
        entries.append((f"seed trial {t.index}", "search seed", Genome.from_dict(t.genome), t))
    if not entries:
        raise ValueError("nothing to select: no trial reached full fidelity and there are no seeds")
    reference = cache.get(score_key("reference", "validation", n_examples),
                          lambda: evaluator.reference("validation", n_examples))
    tasks = evaluator.tasks
    objective_names = [t.name for t in evaluator.objective_tasks()]
    counted = counted_tasks(reference, tasks, metric=evaluator.metric,
                            chance_z=evaluator.chance_z or 2.0)
    scored: dict[str, tuple[object, bool, dict | None]] = {}
    contenders = []
    for name, kind, genome, trial in tqdm(entries, desc="validation", disable=not progress):
        gid = genome.genome_id
        if gid not in scored:
            score = cache.get(score_key(gid, "validation", n_examples),
                              lambda g=genome: evaluator.score(g, "validation", n_examples))
            repaired, record = False, None
            if repair is not None and genome.n_kept < genome.n_layers:
                tag = getattr(repair, "cache_tag", None)  # the repair's settings: a key for its scores
                if tag is None:
                    fixed, fit_record = repair(genome, n_examples)
                else:
                    fixed, fit_record = cache.get_with_record(
                        score_key(f"{gid}+repair-{tag}", "validation", n_examples),
                        lambda g=genome: repair(g, n_examples))
                repaired, record = repair_decision(fixed, score, reference, tasks, counted,
                                                   evaluator.metric, fit_record,
                                                   objective_counted=objective_names, mc=evaluator.mc_objective)
                score = fixed if repaired else score
            scored[gid] = (score, repaired, record)
        score, repaired, record = scored[gid]
        objective = symmetric_retention(score, reference, tasks, metric=evaluator.metric,
                                        counted=objective_names, mc=evaluator.mc_objective)
        yardstick = symmetric_retention(score, reference, tasks, metric=evaluator.metric,
                                        counted=counted)
        contenders.append(Contender(name, kind, genome, trial, objective.retention_sym,
                                    yardstick.retention_sym, score, repaired, record))
    if cache.read:
        logger.info("validation: %d scores read back from %s (a resumed run)", cache.read, cache.path)
    return decide(contenders, reference, tasks, counted, evaluator.metric, n_examples,
                  objective_counted=objective_names, mc=evaluator.mc_objective)


def _beats(a: Contender, b: Contender, reference, tasks, counted, metric: str, objective_counted,
           mc: str) -> tuple[bool, dict, dict | None]:
    """(the evidence says `a` beats `b`, its yardstick interval, its objective interval or None):
    the yardstick's paired interval above zero, or (likelihood objective) not below on the
    yardstick with the objective's paired interval above zero."""
    interval = paired_bootstrap(a.score, b.score, reference, tasks, counted, metric=metric)
    if interval["ci95"][0] > 0:
        return True, interval, None
    if mc == "likelihood" and objective_counted:
        objective = paired_bootstrap(a.score, b.score, reference, tasks, objective_counted, metric=metric,
                                     mc="likelihood")
        return interval["diff"] >= 0 and objective["ci95"][0] > 0, interval, objective
    return False, interval, None


def _evidence_text(interval: dict, objective: dict | None) -> str:
    if objective is None:
        return f"by {interval_text(interval)}"
    return (f"on the likelihood objective by {interval_text(objective)} and is not below it on the "
            f"yardstick ({interval_text(interval)})")


def decide(contenders: Sequence[Contender], reference, tasks, counted: Sequence[str],
           metric: str, n_examples: int | None, *, objective_counted: Sequence[str] = (),
           mc: str = "accuracy") -> Selection:
    """The rule of the module docstring over scored contenders; `counted`, the yardstick's tasks;
    `objective_counted` and `mc`, the search objective's (its second line of evidence where `mc`
    is "likelihood"). The incumbent seed is the best baseline seed; a search seed replaces it only
    on the same evidence a finalist needs, so a returned seed is never a lucky read either."""
    finalists = [c for c in contenders if c.kind == "finalist"]
    baselines = [c for c in contenders if c.kind == "seed"]

    def rank(c: Contender) -> tuple[float, float]:
        return (c.retention_sym, c.objective)

    def beats(a: Contender, b: Contender) -> tuple[bool, dict, dict | None]:
        return _beats(a, b, reference, tasks, counted, metric, objective_counted, mc)

    base = max(baselines, key=rank) if baselines else None
    best_seed, note = base, ""
    for seed in sorted((c for c in contenders if c.kind == "search seed"), key=rank, reverse=True):
        if best_seed is None:
            best_seed = seed
        elif seed.genome.genome_id != best_seed.genome.genome_id:
            won, interval, objective = beats(seed, best_seed)
            if won:
                note = f"; {seed.what} beat {best_seed.what} on validation {_evidence_text(interval, objective)}"
                best_seed = seed
    best = max(finalists, key=rank) if finalists else None

    def selection(winner, source, message, interval=None, objective=None) -> Selection:
        return Selection(winner, best_seed, tuple(contenders), interval, source, message + note, n_examples,
                         objective, base)

    if best is None:
        return selection(best_seed, "seed", f"no searched genome reached full fidelity; returning "
                                            f"{best_seed.what}")
    if best_seed is None:
        return selection(best, "search", f"{best.name} ({best.trial.origin}) is the best finalist on "
                                         f"validation; the run had no seeds to compare it with")
    if best.genome.genome_id == best_seed.genome.genome_id:
        return selection(best_seed, "seed", f"the search's best genome is {best_seed.what} itself; "
                                            f"returning it")
    won, interval, objective = beats(best, best_seed)
    if won:
        return selection(best, "search", f"{best.label} ({best.trial.origin}) beat {best_seed.what} on "
                                         f"validation {_evidence_text(interval, objective)}; returning it",
                         interval, objective)
    why = (f"{best.label}: {interval_text(interval)}, its paired interval is not above zero"
           + (f"; on the likelihood objective {interval_text(objective)}" if objective else ""))
    return selection(best_seed, "seed", f"no genome beat {best_seed.what} on validation ({why}); "
                                        f"returning it", interval, objective)
