"""Append-only trial journal (JSONL): one line per finished trial, fsync'd, so a killed run resumes.

Stores recipes' genomes, fidelities, scores and times; a torn last line (killed mid-write) is
dropped on load. Also the run header (`run.json`) that resume checks against.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptailor_merge.atomic import write_json_atomic  # noqa: F401  (run.json / summary.json writers import it here)
from gptailor_merge.errors import ResumeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RungResult:
    n_examples: int
    metrics: dict[str, dict[str, float]]  # task -> metric -> value
    losses: dict[str, float]  # task -> loss (lower is better)
    retention: float  # mean retention against the dense base at this budget
    seconds: float


@dataclass(frozen=True)
class Trial:
    index: int
    genome: dict
    genome_id: str
    rungs: tuple[RungResult, ...]
    loss: float  # what nevergrad was told (1 - retention at the highest rung)
    seconds: float
    status: str = "ok"  # ok | failed | cached
    error: str | None = None
    seeded: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def fidelity(self) -> int:
        return self.rungs[-1].n_examples if self.rungs else 0

    @property
    def retention(self) -> float:
        return self.rungs[-1].retention if self.rungs else float("nan")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        rungs = tuple(RungResult(**r) for r in data.pop("rungs"))
        return cls(rungs=rungs, **data)


class Journal:
    """The run's `journal.jsonl`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> list[Trial]:
        if not self.path.is_file():
            return []
        trials: list[Trial] = []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good_bytes = 0
        for line in lines:
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                trials.append(Trial.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError):
                logger.warning("dropping a torn journal line (run was killed mid-write)")
                break
            good_bytes += len(line) + 1
        if good_bytes < len(raw):
            with self.path.open("r+b") as handle:
                handle.truncate(min(good_bytes, len(raw)))
        for expected, trial in enumerate(trials):
            if trial.index != expected:
                raise ResumeError(f"journal {self.path} skips from trial {expected - 1} to {trial.index}")
        return trials

    def append(self, trial: Trial) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(trial.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())

