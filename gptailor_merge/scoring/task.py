"""One task: the `Task` type and how examples split into search and held-out (by content hash).

Below every task source: `tasks` (the registry and the JSONL loader), `dataset_source` (`hf:`,
`disk:`) and `lm_eval_bridge` (`lm_eval:`) all build tasks with `make_task` / `split_examples`,
and `tasks.load_task` dispatches to the sources, so the sources never import `tasks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from gptailor_merge.core.errors import TaskError
from gptailor_merge.scoring.examples import ChoiceExample, Example, Kind, example_kind

SPLITS = ("search", "heldout")


@dataclass(frozen=True)
class Task:
    """A scored task; `search` and `heldout` are disjoint and already in their seeded order."""

    name: str
    kind: Kind
    search: tuple[Example, ...]
    heldout: tuple[Example, ...]
    chance: float

    def examples(self, split: str = "search", n_examples: int | None = None) -> tuple[Example, ...]:
        """The first `n_examples` of `split` (all when None): a low budget is a prefix of a high one."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r} for task {self.name!r}; use one of {SPLITS}.")
        if n_examples is not None and n_examples < 1:
            raise TaskError(f"n_examples must be a positive integer or None, got {n_examples!r}.")
        examples = self.search if split == "search" else self.heldout
        return examples if n_examples is None else examples[:n_examples]


def text_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The perplexity tasks among `tasks`: what baselines and repairs calibrate on."""
    return [task for task in tasks if task.kind == "perplexity"]


def shuffled(examples: Sequence[Example], seed: int) -> tuple[Example, ...]:
    """The examples in the fixed order of `seed` (stdlib Random: stable across platforms)."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    return tuple(order)


def example_key(example: Example) -> str:
    """A stable hash of an example's content (the same on every machine and Python)."""
    payload = json.dumps(dataclasses.asdict(example), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def split_examples(examples: Sequence[Example], seed: int) -> tuple[tuple[Example, ...], ...]:
    """Search / held-out by a stable hash of each example's content, never by `seed`, so no seed
    or command can move an example from one split to the other (equal examples share a split);
    the seed only orders each split. A set too small for the hash to fill both splits is halved
    by hash rank instead."""
    keys = [example_key(ex) for ex in examples]
    search = [ex for ex, k in zip(examples, keys, strict=True) if int(k[:8], 16) % 2 == 0]
    heldout = [ex for ex, k in zip(examples, keys, strict=True) if int(k[:8], 16) % 2 == 1]
    if len(examples) >= 2 and (not search or not heldout):
        ranked = [ex for _, ex in sorted(zip(keys, examples, strict=True), key=lambda p: p[0])]
        half = len(ranked) // 2
        search, heldout = ranked[:half], ranked[half:]
    return shuffled(search, seed), shuffled(heldout, seed)


def make_task(name: str, search: Sequence[Example], heldout: Sequence[Example], source: str) -> Task:
    """Checks both splits are non-empty and of one kind, and computes the chance level."""
    for split, examples in zip(SPLITS, (search, heldout), strict=True):
        if not examples:
            raise TaskError(
                f"task {name!r} from {source} has an empty {split} split; it needs at least 2 "
                f"examples (or a non-empty {name}.{split}.jsonl)."
            )
    kinds = {example_kind(example) for example in (*search, *heldout)}
    if len(kinds) != 1:
        raise TaskError(f"task {name!r} from {source} mixes multiple-choice and text examples.")
    kind = kinds.pop()
    chance = 0.0
    if kind == "multiple_choice":
        choices = [len(ex.choices) for ex in (*search, *heldout) if isinstance(ex, ChoiceExample)]
        chance = sum(1.0 / n for n in choices) / len(choices)
    return Task(name, kind, tuple(search), tuple(heldout), chance)
