"""Append-only trial journal (JSONL): one line per finished trial, fsync'd, so a killed run resumes.

Stores recipes' genomes, fidelities, scores and times. Loading never writes: a torn last line
(killed mid-write, no newline) is skipped, and cut off by the next append; any other unreadable line
is an error naming the file and line. Each record carries the format version `v`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptailor_merge.core.atomic import write_json_atomic  # noqa: F401  (run.json / summary.json writers import it here)
from gptailor_merge.core.errors import JournalError

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 2  # the `v` of each record; records without one (before versioning) read as 1
READABLE_VERSIONS = (1, 2)  # 2 added `RungResult.paired`; a version-1 rung reads with none


@dataclass(frozen=True)
class RungResult:
    n_examples: int
    metrics: dict[str, dict[str, float]]  # task -> metric -> value
    losses: dict[str, float]  # task -> loss (lower is better)
    retention: float  # mean retention against the dense base at this budget
    seconds: float
    # per objective task, per-example `loss` and `weight` (search.racing.paired_values): what a
    # challenger is paired against when this rung is the incumbent's
    paired: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)


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

    @property
    def origin(self) -> str:
        """Where the proposal came from: seed, local (move) or optimizer; journals written before
        origins were recorded say only whether it was a seed."""
        return self.extra.get("origin", "seed" if self.seeded else "optimizer")

    def to_json(self) -> str:
        return json.dumps({"v": JOURNAL_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        data = dict(data)
        version = data.pop("v", 1)
        if version not in READABLE_VERSIONS:
            raise ValueError(f"format version {version!r}; this gptailor-merge reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        rungs = tuple(RungResult(**r) for r in data.pop("rungs"))
        return cls(rungs=rungs, **data)


def best_so_far(trials: Sequence[Trial], top: int) -> list[Trial]:
    """The trials that beat every earlier full-fidelity (`top` examples) trial, in journal order:
    the steps of an anytime curve (the report's figure and the quality benchmark's held-out curve)."""
    steps: list[Trial] = []
    for t in trials:
        if (t.status == "ok" and t.fidelity == top and math.isfinite(t.retention)
                and (not steps or t.loss < steps[-1].loss)):
            steps.append(t)
    return steps


class Journal:
    """The run's `journal.jsonl`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> list[Trial]:
        """The journaled trials, in order. Read-only: a torn last line is skipped, not removed."""
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        trials: list[Trial] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                trials.append(Trial.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                if number == len(lines):  # no newline after it: a write the kill cut short
                    logger.warning("%s: skipping the torn last line %d (the run was killed mid-write)",
                                   self.path, number)
                    break
                reason = str(exc) if "format version" in str(exc) else f"{type(exc).__name__}: {exc}"
                raise JournalError(
                    f"{self.path} line {number} is not a trial record ({reason[:200]}). The journal was "
                    "left as it is: repair or delete that line (the other lines are kept), or start a "
                    "new run"
                ) from None
        for expected, trial in enumerate(trials):
            if trial.index != expected:
                raise JournalError(f"{self.path}: trial {trial.index} follows trial {expected - 1} "
                                   f"(line order is trial order); the file was left as it is")
        return trials

    def append(self, trial: Trial) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        with self.path.open("a") as handle:
            handle.write(trial.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _cut_torn_tail(self) -> None:
        """Before writing: a last line without its newline is a torn write; cut it off (or, if it
        is a whole record, end it) so the new record starts on its own line."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open("r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            data = handle.seek(0) or handle.read()
            start = data.rfind(b"\n") + 1
            try:
                Trial.from_dict(json.loads(data[start:]))
                handle.write(b"\n")
            except (ValueError, TypeError, KeyError, AttributeError):
                logger.warning("%s: removing the torn last line (the run was killed mid-write)", self.path)
                handle.truncate(start)
