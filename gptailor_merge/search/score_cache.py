"""Validation scores already paid for, kept in the run folder so a killed run does not pay again.

Scoring the finalists and the baseline seeds on validation takes longer than the search on a real
family (SmolLM2-135M on 2 cores: ~15 minutes a contender), and the journal only replays the search.
Each finished score (every task's metrics and per-example values, which the paired intervals
resample) is appended as one JSON line, keyed by the genome and the budget; a resumed run (whose
config, family and tasks `run.run_folder.check_fingerprint` has matched) reads it back bitwise
equal. A torn last line is a write the kill cut short and is skipped. No torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from gptailor_merge.scoring.evaluate import Score, TaskScore

logger = logging.getLogger(__name__)

VALIDATION_SCORES = "validation_scores.jsonl"


def score_to_dict(score: Score) -> dict:
    return {"split": score.split, "n_examples": score.n_examples,
            "tasks": {name: {"metrics": dict(t.metrics), "per_example": {k: list(v) for k, v in t.per_example.items()}}
                      for name, t in score.tasks.items()}}


def score_from_dict(data: dict) -> Score:
    tasks = {name: TaskScore(name, dict(t["metrics"]), {k: tuple(v) for k, v in t["per_example"].items()})
             for name, t in data["tasks"].items()}
    return Score(data["split"], data["n_examples"], tasks)


def score_key(what: str, split: str, n_examples: int | None) -> str:
    """`what`: a genome id, or "reference" for the dense base the retentions are ratios to."""
    return f"{what}/{split}/{'all' if n_examples is None else n_examples}"


class ScoreCache:
    """`path`'s scores by key; `path=None` keeps nothing (every call scores)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.scores: dict[str, Score] = {}
        self.read = 0  # scores served from the file, for the run's log
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.scores[record["key"]] = score_from_dict(record["score"])
            except (ValueError, TypeError, KeyError) as exc:
                if number == len(lines):  # no newline after it: the kill cut the write short
                    logger.warning("%s: skipping the torn last line %d", self.path, number)
                    break
                raise ValueError(f"{self.path} line {number} is not a score record ({exc}); delete the file "
                                 "to score validation again") from None

    def get(self, key: str, compute: Callable[[], Score]) -> Score:
        """The stored score of `key`, else `compute()`, stored (and appended to the file) first."""
        if key in self.scores:
            self.read += 1
            return self.scores[key]
        score = compute()
        self.scores[key] = score
        if self.path is not None:
            self._append(key, score)
        return score

    def _append(self, key: str, score: Score) -> None:
        self._cut_torn_tail()
        with self.path.open("a") as handle:
            handle.write(json.dumps({"key": key, "score": score_to_dict(score)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _cut_torn_tail(self) -> None:
        """A last line without its newline is a write a kill cut short: cut it off before appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(raw.rfind(b"\n") + 1)
