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
from collections.abc import Sequence
from dataclasses import dataclass, field

import nevergrad as ng
import numpy as np

from gptailor_merge.core.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    DEFAULT_PREFIX_CACHE_BYTES,
)
from gptailor_merge.core.genome import Genome
from gptailor_merge.materialize.prefix import PrefixReuse
from gptailor_merge.scoring import (
    Retention,
    Score,
    Task,
    chance_level_tasks,
    evaluate_model,
    symmetric_retention,
)
from gptailor_merge.search.journal import RungResult, Trial
from gptailor_merge.search.racing import paired_values
from gptailor_merge.search.space import SearchSpace, paper_seeds

logger = logging.getLogger(__name__)


@dataclass
class Evaluator:
    """Stitches a genome and scores it; caches dense references per (split, budget)."""

    stitcher: object  # gptailor_merge.materialize.stitch.Stitcher (duck-typed: build(genome) -> model)
    tokenizer: object
    tasks: Sequence[Task]
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    metric: str = "acc"
    # hidden states of shared leading layers, reused across candidates (gptailor_merge/materialize/prefix.py);
    # scores are bitwise the same with or without it. 0 bytes turns it off.
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    # the search split's rung budgets: batching restarts at each (scoring.evaluate_model), so a
    # promoted candidate's earlier batches repeat exactly and come from the prefix cache
    rungs: Sequence[int] = ()
    # multiple-choice tasks where the dense base is within chance_z standard errors of chance at
    # the top rung are left out of retention and losses (0: every task counts)
    chance_z: float = 0.0
    # multiple-choice form of the search objective (scoring.objectives): "likelihood" compares the
    # gold choice's cross-entropy, "accuracy" the reported yardstick's accuracy ratio
    mc_objective: str = "accuracy"
    # multiple choice in packed rows, the context once (scoring.shared_context); False: one
    # sequence per choice; None: where the model supports it. Equal within float rounding
    shared_context: bool | None = None
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
                              boundaries=self.boundaries(split),
                              shared_context=self.shared_context)

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
        ret = self._yardstick(score, reference)
        paired = paired_values(score, reference, self.tasks, [t.name for t in self.objective_tasks()],
                               mc=self.mc_objective, metric=self.metric)
        return RungResult(n_examples, {k: dict(v.metrics) for k, v in score.tasks.items()},
                          self._losses(ret), ret.retention_sym, time.perf_counter() - t0, paired)

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

    def _yardstick(self, score: Score, reference: Score) -> Retention:
        """The yardstick over the objective tasks (scoring.objectives), computed once per rung."""
        return symmetric_retention(score, reference, self.tasks, metric=self.metric,
                                   counted=[t.name for t in self.objective_tasks()],
                                   mc=self.mc_objective)

    def losses(self, score: Score, reference: Score) -> dict[str, float]:
        """Per objective task, minus its log ratio against the dense base (lower is better): the
        Pareto front's coordinates, on the yardstick's scale."""
        return self._losses(self._yardstick(score, reference))

    def _losses(self, ret: Retention) -> dict[str, float]:
        return {t.name: -ret.log_ratios[t.name] for t in self.objective_tasks()}

    def retention(self, score: Score, reference: Score) -> float:
        """`retention_sym` over the objective tasks."""
        return self._yardstick(score, reference).retention_sym


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

    @property
    def optimizer_trials(self) -> int:
        """Trials that were not seeds: proposed by nevergrad or by a local move."""
        return sum(1 for t in self.trials if not t.seeded)

    @property
    def trial_seconds(self) -> float:
        """The trials' own evaluation time, as first run (a resumed run replays, not re-times)."""
        return sum(t.seconds for t in self.trials)

    def summary(self) -> dict:
        """The search part of a run's summary.json (one shape, with or without held-out rows)."""
        origins: dict[str, int] = {}
        for t in self.trials:
            origins[t.origin] = origins.get(t.origin, 0) + 1
        return {
            "optimizer": self.optimizer,
            "trials": len(self.trials),
            "optimizer_trials": self.optimizer_trials,
            "origins": origins,
            "evaluated": self.evaluated,
            "replayed_from_journal": self.replayed,
            "rungs": self.rungs,
            "full_fidelity_evaluations": self.full_fidelity_evaluations,
            "full_fidelity_evaluations_saved": self.full_fidelity_saved,
            "search_seconds": round(self.seconds, 1),
            "trial_seconds": round(self.trial_seconds, 1),
            "pareto_size": len(self.pareto),
            "best_trial": self.best.index if self.best else None,
            "winner_from_seed": bool(self.best.seeded) if self.best else None,
            "winner_origin": self.best.origin if self.best else None,
            "best_search_retention": round(self.best.retention, 6) if self.best else None,
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


def build_evaluator(config, family, tasks: Sequence[Task], *, stitcher=None, tokenizer=None) -> Evaluator:
    """The run's evaluator from its RunConfig; the driver and each parallel worker build it here.
    Pass a `stitcher` and `tokenizer` already loaded for this family to share them."""
    from transformers import AutoTokenizer

    from gptailor_merge.materialize.stitch import Stitcher

    ev = config.eval
    stitcher = stitcher or Stitcher(family, device=ev.device, dtype=ev.dtype)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(family.base.path)
    return Evaluator(stitcher, tokenizer, tasks, batch_size=ev.batch_size, max_length=ev.max_length,
                     metric=config.search.metric, rungs=tuple(config.search.rungs()),
                     chance_z=config.search.chance_z, mc_objective=config.search.mc_objective,
                     prefix_cache_bytes=ev.prefix_cache_bytes, shared_context=None if ev.shared_context else False)


def make_optimizer(name: str, parametrization: ng.p.Parameter, budget: int,
                   num_workers: int = 1) -> ng.optimizers.base.Optimizer:
    """Any optimizer of nevergrad's registry by name; `num_workers` > 1: asynchronous ask/tell."""
    return ng.optimizers.registry[name](parametrization=parametrization, budget=budget, num_workers=num_workers)


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


@dataclass(frozen=True)
class Proposer:
    """Where a trial's genome comes from: the seeds first, then nevergrad's ask, or with
    probability `local_fraction` a local move (`neighbours.neighbour`) around one of the `elite`
    best full-fidelity genomes. Deterministic in (seed, trial index, trials so far), so a resumed
    run re-proposes exactly what it proposed before."""

    space: SearchSpace
    seed: int
    local_fraction: float = 0.0
    elite: int = 4

    def local(self, index: int, trials: Sequence[Trial], top: int, known: set[str]) -> Genome | None:
        from gptailor_merge.search.neighbours import neighbour

        rng = np.random.default_rng([self.seed, index, 7])
        if self.local_fraction <= 0 or rng.random() >= self.local_fraction:
            return None
        best: dict[str, Trial] = {}
        for t in trials:
            if t.status == "ok" and t.fidelity == top:
                best.setdefault(t.genome_id, t)
        ranked = sorted(best.values(), key=lambda t: (t.loss, t.index))[: self.elite]
        if not ranked:
            return None
        weights = np.array([1.0 / (r + 1) for r in range(len(ranked))])
        for _ in range(20):
            parent = ranked[int(rng.choice(len(ranked), p=weights / weights.sum()))]
            child = neighbour(Genome.from_dict(parent.genome), self.space, rng)
            if child.genome_id not in known:
                return child
        return None


def prioritized_seeds(space: SearchSpace, extra_removals: Sequence[Sequence[int]], limit: int
                      ) -> list[Genome]:
    """At most `limit` seeds, the most informative first: each removal set (the baselines' before
    the paper's orders) with the base's layers, then with the widest merge at the middle scale,
    then the other scales and single fine-tunes (space.paper_seeds has them all)."""
    every = paper_seeds(space, extra_removals)
    removal_rank = {}
    for g in every:
        removal_rank.setdefault(tuple(g.removed), len(removal_rank))
    baseline = {tuple(sorted(r)) for r in extra_removals}
    lo, hi = space.lambda_range
    mid = round((lo + hi) / 2, 4)

    def tier(g: Genome) -> int:
        spec = g.layers[0]
        if not spec.sources:
            return 0
        if spec.is_merge:
            return 1 if spec.lam == mid else 2
        return 3

    ranked = sorted(every, key=lambda g: (tier(g), tuple(g.removed) not in baseline,
                                          removal_rank[tuple(g.removed)]))
    return ranked[:limit]
