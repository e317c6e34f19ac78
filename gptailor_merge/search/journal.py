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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


RECORD_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
"""What parsing a damaged JSON line as a record raises."""


def read_records(path: Path, parse: Callable[[dict], Any], bad_line: Callable[[int, Exception], Exception]
                 ) -> list:
    """Every line of a JSON-lines file parsed, in order, without writing: a last line that does not
    parse is a write a kill cut short and is skipped; any other is `bad_line(number, error)`, raised."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(parse(json.loads(line)))
        except RECORD_ERRORS as exc:
            if number == len(lines):  # no newline after it: a write the kill cut short
                logger.warning("%s: skipping the torn last line %d (the run was killed mid-write)", path, number)
                break
            raise bad_line(number, exc) from None
    return records


def append_record(path: Path, line: str, parse: Callable[[dict], Any]) -> None:
    """Append one JSON line, fsync'd. A last line without its newline is first cut off (a torn
    write) or, if `parse` reads it as a whole record, ended, so the new record starts on its own line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size:
        with path.open("r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                data = handle.seek(0) or handle.read()
                start = data.rfind(b"\n") + 1
                try:
                    parse(json.loads(data[start:]))
                    handle.write(b"\n")
                except RECORD_ERRORS:
                    logger.warning("%s: removing the torn last line (the run was killed mid-write)", path)
                    handle.truncate(start)
    with path.open("a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class Journal:
    """The run's `journal.jsonl`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> list[Trial]:
        """The journaled trials, in order. Read-only: a torn last line is skipped, not removed."""
        def bad_line(number: int, exc: Exception) -> JournalError:
            reason = str(exc) if "format version" in str(exc) else f"{type(exc).__name__}: {exc}"
            return JournalError(
                f"{self.path} line {number} is not a trial record ({reason[:200]}). The journal was "
                "left as it is: repair or delete that line (the other lines are kept), or start a "
                "new run"
            )

        trials = read_records(self.path, Trial.from_dict, bad_line)
        for expected, trial in enumerate(trials):
            if trial.index != expected:
                raise JournalError(f"{self.path}: trial {trial.index} follows trial {expected - 1} "
                                   f"(line order is trial order); the file was left as it is")
        return trials

    def append(self, trial: Trial) -> None:
        append_record(self.path, trial.to_json(), Trial.from_dict)
