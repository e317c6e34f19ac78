"""What a search hands back: its trials, best trial and Pareto front, and the summary they make."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gptailor_merge.search.journal import Trial


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
