"""The GPTailor search: nevergrad ask/tell, successive halving over the example budget, Pareto front.

Each asked candidate decodes to a genome (target met by construction), is stitched in memory and
scored on a prefix of the search split; promising ones are promoted to larger prefixes (ASHA rule).
Every finished trial is journaled; a resumed run re-asks the same deterministic sequence and
replays journaled results instead of evaluating them again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nevergrad as ng
import numpy as np

from gptailor_merge.errors import ResumeError
from gptailor_merge.genome import Genome
from gptailor_merge.journal import Journal, RungResult, Trial
from gptailor_merge.prefix import DEFAULT_PREFIX_CACHE_BYTES, PrefixReuse
from gptailor_merge.scoring import (
    Score,
    Task,
    chance_level_tasks,
    evaluate_model,
    retention,
    task_loss,
)
from gptailor_merge.space import SearchSpace, paper_seeds

logger = logging.getLogger(__name__)


@dataclass
class Evaluator:
    """Stitches a genome and scores it; caches dense references per (split, budget)."""

    stitcher: object  # gptailor_merge.stitch.Stitcher (duck-typed: build(genome) -> model)
    tokenizer: object
    tasks: Sequence[Task]
    batch_size: int = 16
    max_length: int = 256
    metric: str = "acc"
    # hidden states of shared leading layers, reused across candidates (gptailor_merge/prefix.py);
    # scores are bitwise the same with or without it. 0 bytes turns it off.
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    # the search split's rung budgets: batching restarts at each (scoring.evaluate_model), so a
    # promoted candidate's earlier batches repeat exactly and come from the prefix cache
    rungs: Sequence[int] = ()
    # multiple-choice tasks where the dense base is within chance_z standard errors of chance at
    # the top rung are left out of retention and losses (0: every task counts)
    chance_z: float = 0.0
    _references: dict = field(default_factory=dict)
    _objective: list | None = field(default=None, init=False, repr=False)
    prefix: PrefixReuse | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prefix_cache_bytes > 0:
            self.prefix = PrefixReuse(self.prefix_cache_bytes)

    def score(self, genome: Genome, split: str, n_examples: int | None) -> Score:
        model = self.stitcher.build(genome)
        if self.prefix is not None:
            model = self.prefix.wrap(model, genome)
        return evaluate_model(model, self.tokenizer, self.tasks, split=split, n_examples=n_examples,
                              batch_size=self.batch_size, max_length=self.max_length,
                              boundaries=self.boundaries(split))

    def boundaries(self, split: str) -> tuple[int, ...]:
        """Batching restarts of `split`: the rungs on the search split (held-out scores stay
        batched as every other scorer path batches them, so they compare bitwise)."""
        return tuple(self.rungs) if split == "search" else ()

    def rung_result(self, genome: Genome, split: str, n_examples: int) -> RungResult:
        """One rung of a trial: score, retention against the dense base, per-task losses. The serial
        loop and every parallel worker call this, so a trial scores the same wherever it runs."""
        t0 = time.perf_counter()
        score = self.score(genome, split, n_examples)
        reference = self.reference(split, n_examples)
        ret = self.retention(score, reference)
        return RungResult(n_examples, {k: dict(v.metrics) for k, v in score.tasks.items()},
                          self.losses(score), ret, time.perf_counter() - t0)

    def reference(self, split: str, n_examples: int | None) -> Score:
        key = (split, n_examples)
        if key not in self._references:
            fam = self.stitcher.family
            self._references[key] = self.score(Genome.base_only(fam.n_layers, fam.n_candidates), split, n_examples)
        return self._references[key]

    def objective_tasks(self) -> list[Task]:
        """The tasks retention and losses count: every task, less the multiple-choice ones on which
        the dense base is at chance at the top rung (`chance_z`). Deterministic, so the serial loop
        and every parallel worker optimize the same objective."""
        if self._objective is None:
            noise: set[str] = set()
            if self.chance_z > 0 and self.rungs:
                top = self.reference("search", max(self.rungs))
                noise = set(chance_level_tasks(top, self.tasks, z=self.chance_z, metric=self.metric))
                if len(noise) == len(self.tasks):
                    logger.warning("the dense base is at chance on every task at %d examples; the "
                                   "objective keeps them all (raise max_examples or use other "
                                   "tasks)", max(self.rungs))
                    noise = set()
                elif noise:
                    logger.warning("left out of the objective, the dense base being within %g "
                                   "standard errors of chance on %d examples: %s (set "
                                   "search.chance_z: 0 to keep them)", self.chance_z,
                                   max(self.rungs), ", ".join(sorted(noise)))
            self._objective = [t for t in self.tasks if t.name not in noise]
        return self._objective

    def losses(self, score: Score) -> dict[str, float]:
        kinds = {t.name: t.kind for t in self.objective_tasks()}
        out = {}
        for name, ts in score.tasks.items():
            if name not in kinds:
                continue
            if kinds[name] == "multiple_choice" and self.metric != "acc":
                out[name] = 1.0 - ts.metrics[self.metric]
            else:
                out[name] = task_loss(ts, kinds[name])
        return out

    def retention(self, score: Score, reference: Score) -> float:
        values = retention(score, reference, self.objective_tasks(), metric=self.metric)
        finite = [v for v in values.values() if math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")


@dataclass
class SearchResult:
    trials: list[Trial]
    best: Trial | None
    pareto: list[Trial]
    rungs: list[int]
    optimizer: str
    seconds: float
    replayed: int = 0

    @property
    def full_fidelity_evaluations(self) -> int:
        return sum(1 for t in self.trials if t.status == "ok" and t.fidelity == self.rungs[-1])

    @property
    def evaluated(self) -> int:
        return sum(1 for t in self.trials if t.status == "ok")

    @property
    def full_fidelity_saved(self) -> int:
        """Evaluations that stopped below the top rung: each saved one full-budget evaluation."""
        return self.evaluated - self.full_fidelity_evaluations

    def summary(self) -> dict:
        """The search part of a run's summary.json (one shape, with or without held-out rows)."""
        return {
            "optimizer": self.optimizer,
            "trials": len(self.trials),
            "evaluated": self.evaluated,
            "replayed_from_journal": self.replayed,
            "rungs": self.rungs,
            "full_fidelity_evaluations": self.full_fidelity_evaluations,
            "full_fidelity_evaluations_saved": self.full_fidelity_saved,
            "search_seconds": round(self.seconds, 1),
            "pareto_size": len(self.pareto),
            "best_search_retention": round(self.best.retention, 6),
        }


def pareto_front(trials: Sequence[Trial], top: int) -> list[Trial]:
    """Non-dominated full-fidelity trials over the per-task losses (unique genomes)."""
    pool = {}
    for t in trials:
        if t.status == "ok" and t.fidelity == top and t.genome_id not in pool:
            pool[t.genome_id] = t
    items = list(pool.values())

    def dominates(a: Trial, b: Trial) -> bool:
        la, lb = a.rungs[-1].losses, b.rungs[-1].losses
        return all(la[k] <= lb[k] for k in la) and any(la[k] < lb[k] for k in la)

    return [t for t in items if not any(dominates(o, t) for o in items if o is not t)]


def build_evaluator(config, family, tasks: Sequence[Task]) -> Evaluator:
    """The run's evaluator from its RunConfig; the driver and each parallel worker build it here."""
    from transformers import AutoTokenizer

    from gptailor_merge.stitch import Stitcher

    ev = config.eval
    stitcher = Stitcher(family, device=ev.device, dtype=ev.dtype)
    tokenizer = AutoTokenizer.from_pretrained(family.base.path)
    return Evaluator(stitcher, tokenizer, tasks, batch_size=ev.batch_size, max_length=ev.max_length,
                     metric=config.search.metric, rungs=tuple(config.search.rungs()),
                     chance_z=config.search.chance_z)


def make_optimizer(name: str, parametrization: ng.p.Parameter, budget: int,
                   num_workers: int = 1) -> ng.optimizers.base.Optimizer:
    """`num_workers` > 1: asynchronous ask/tell with that many candidates in flight."""
    return ng.optimizers.registry[name](parametrization=parametrization, budget=budget, num_workers=num_workers)


def promoted(rung_losses: Sequence[float], loss: float, eta: int) -> bool:
    """ASHA rule: go on to the next rung while in the top 1/eta of this rung's finished losses."""
    previous = [*rung_losses, loss]
    cutoff = np.quantile(previous, 1.0 / eta) if len(previous) > 1 else math.inf
    return loss <= cutoff


def run_search(
    space: SearchSpace,
    evaluator: Evaluator,
    run_dir: Path,
    *,
    optimizer: str,
    n_trials: int,
    rungs: Sequence[int],
    eta: int = 3,
    seed: int = 0,
    time_budget_s: float | None = None,
    use_seeds: bool = True,
    extra_seed_removals: Sequence[Sequence[int]] = (),
    progress: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Run (or resume) the ask/tell loop; the journal in `run_dir` is the source of truth."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    rungs = sorted(rungs)
    journal = Journal(run_dir / "journal.jsonl")
    done = journal.load()
    param = space.parametrization(seed)
    opt = make_optimizer(optimizer, param, n_trials)
    if use_seeds:
        seeds = paper_seeds(space, extra_seed_removals)[:n_trials]
        for genome in reversed(seeds):  # suggest is LIFO: the first seed is asked first
            opt.suggest(space.encode(genome))
        seeded_ids = {g.genome_id for g in seeds}
    else:
        seeded_ids = set()
    trials: list[Trial] = []
    by_genome: dict[str, Trial] = {}
    rung_losses: dict[int, list[float]] = {n: [] for n in rungs}
    best: Trial | None = None
    bar = tqdm(total=n_trials, desc="search", disable=not progress, initial=0)
    for index in range(n_trials):
        if time_budget_s is not None and index >= len(done) and time.perf_counter() - start > time_budget_s:
            logger.info("wall-clock budget of %.0fs reached after %d trials", time_budget_s, index)
            break
        candidate = opt.ask()
        genome = space.decode(candidate.value)
        if index < len(done):  # replay: same deterministic proposal, journaled result
            trial = done[index]
            if trial.genome_id != genome.genome_id:
                raise ResumeError(
                    f"trial {index} of the journal ({trial.genome_id}) is not what this config "
                    f"proposes ({genome.genome_id}); resume with the run's own config.yaml"
                )
        elif genome.genome_id in by_genome:  # the optimizer re-proposed a known genome
            prior = by_genome[genome.genome_id]
            trial = Trial(index, genome.to_dict(), genome.genome_id, prior.rungs, prior.loss, 0.0,
                          status="cached", seeded=genome.genome_id in seeded_ids)
            journal.append(trial)
        else:
            trial = _evaluate(index, genome, evaluator, rungs, rung_losses, eta, genome.genome_id in seeded_ids)
            journal.append(trial)
        for r in trial.rungs:
            if trial.status == "ok":
                rung_losses[r.n_examples].append(1.0 - r.retention)
        if trial.status == "failed":
            opt.tell(candidate, 1.0, constraint_violation=[1.0])
        else:
            opt.tell(candidate, trial.loss)
        trials.append(trial)
        by_genome.setdefault(trial.genome_id, trial)
        if trial.status == "ok" and trial.fidelity == rungs[-1] and (best is None or trial.loss < best.loss):
            best = trial
        if on_trial:
            on_trial(trial)
        bar.update(1)
        bar.set_postfix(best=f"{1 - best.loss:.3f}" if best else "-", n=trial.fidelity)
    bar.close()
    replayed = min(len(done), len(trials))
    return SearchResult(trials, best, pareto_front(trials, rungs[-1]), list(rungs), optimizer,
                        time.perf_counter() - start, replayed)


def _evaluate(index: int, genome: Genome, evaluator: Evaluator, rungs: Sequence[int],
              rung_losses: dict[int, list[float]], eta: int, seeded: bool) -> Trial:
    """Score at the lowest rung; promote while in the top 1/eta of that rung so far (ASHA)."""
    start = time.perf_counter()
    results: list[RungResult] = []
    try:
        for level, n in enumerate(rungs):
            result = evaluator.rung_result(genome, "search", n)
            if not math.isfinite(result.retention):
                raise FloatingPointError("retention is not finite (NaN scores)")
            results.append(result)
            if level == len(rungs) - 1 or not promoted(rung_losses[n], 1.0 - result.retention, eta):
                break
    except Exception as exc:  # a failed trial is journaled and the search goes on
        logger.warning("trial %d failed: %s", index, exc)
        return Trial(index, genome.to_dict(), genome.genome_id, tuple(results), 1.0,
                     time.perf_counter() - start, status="failed", error=f"{type(exc).__name__}: {exc}",
                     seeded=seeded)
    return Trial(index, genome.to_dict(), genome.genome_id, tuple(results), 1.0 - results[-1].retention,
                 time.perf_counter() - start, seeded=seeded)
