"""The search's scorer: a genome, stitched in memory, scored on a prefix of a split against the dense base.

One `Evaluator` per run (and per parallel worker, from `build_evaluator`): it owns the stitcher, the
prefix reuse and the dense reference scores; every trial, seed and validation contender goes through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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
from gptailor_merge.search.journal import RungResult
from gptailor_merge.search.racing import paired_values

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
