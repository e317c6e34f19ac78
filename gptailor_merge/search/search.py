"""The GPTailor search's proposals: nevergrad by name, the seeds first, then ask (or a local move).

The scorer is `search.evaluator`, the halving rules `search.halving`, the result and its Pareto
front `search.result`.

Each asked candidate decodes to a genome (target met by construction), is stitched in memory and
scored on a prefix of the search split; promising ones are promoted to larger prefixes (ASHA rule).
Every finished trial is journaled; a resumed run re-asks the same deterministic sequence and
replays journaled results instead of evaluating them again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import nevergrad as ng
import numpy as np

from gptailor_merge.core.genome import Genome
from gptailor_merge.search.journal import Trial
from gptailor_merge.search.space import SearchSpace, paper_seeds

logger = logging.getLogger(__name__)


def make_optimizer(name: str, parametrization: ng.p.Parameter, budget: int,
                   num_workers: int = 1) -> ng.optimizers.base.Optimizer:
    """Any optimizer of nevergrad's registry by name; `num_workers` > 1: asynchronous ask/tell."""
    return ng.optimizers.registry[name](parametrization=parametrization, budget=budget, num_workers=num_workers)


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
