"""Validation scores already paid for, kept in the run folder so a killed run does not pay again.

Scoring the finalists and the baseline seeds on validation takes longer than the search on a real
family (SmolLM2-135M on 2 cores: ~15 minutes a contender), and the journal only replays the search.
Each finished score (every task's metrics and per-example values, which the paired intervals
resample) is appended as one JSON line, keyed by the genome and the budget (a repaired contender's
also by its repair settings, with its fit's record beside the score); a resumed run (whose
config, family and tasks `run.run_folder.check_fingerprint` has matched) reads it back bitwise
equal. A torn last line is a write the kill cut short and is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from gptailor_merge.core.errors import ResumeError
from gptailor_merge.scoring.evaluate import Score, TaskScore
from gptailor_merge.search.journal import append_record, read_records

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
    """`path`'s scores by key; `path=None` keeps nothing (every call scores). The file is read and
    appended as the journal is (`search.journal.read_records` / `append_record`)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.scores: dict[str, Score] = {}
        self.records: dict[str, dict] = {}  # key -> what produced the score (a repair's fit), where kept
        self.read = 0  # scores served from the file, for the run's log
        if self.path is not None:
            for key, score, record in read_records(self.path, _parse, self._bad_line):
                self.scores[key] = score
                if record is not None:
                    self.records[key] = record

    def _bad_line(self, number: int, exc: Exception) -> ResumeError:
        return ResumeError(f"{self.path} line {number} is not a score record ({exc}); delete the file "
                          "to score validation again")

    def get(self, key: str, compute: Callable[[], Score]) -> Score:
        """The stored score of `key`, else `compute()`, stored (and appended to the file) first."""
        return self.get_with_record(key, lambda: (compute(), None))[0]

    def get_with_record(self, key: str, compute: Callable[[], tuple[Score, dict | None]]
                        ) -> tuple[Score, dict | None]:
        """`get` for a computation that also returns a JSON-able record of itself (a repair's fit)."""
        if key in self.scores:
            self.read += 1
            return self.scores[key], self.records.get(key)
        score, record = compute()
        self.scores[key] = score
        if record is not None:
            self.records[key] = record
        if self.path is not None:
            line = {"key": key, "score": score_to_dict(score), **({"record": record} if record is not None else {})}
            append_record(self.path, json.dumps(line), _parse)
        return score, record


def _parse(record: dict) -> tuple[str, Score, dict | None]:
    return record["key"], score_from_dict(record["score"]), record.get("record")
