"""One task: the `Task` type and how examples split into search, validation and held-out (by content hash).

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

SOURCE_SPLITS = ("search", "heldout")
"""The splits a task source provides (file pairs, saved datasets); validation is carved from search."""
SPLITS = ("search", "validation", "heldout")
"""What a task is scored on: search (the optimizer reads it), validation (the finalists and the
best baseline seeds are compared there before a winner is returned), held-out (what we claim)."""


@dataclass(frozen=True)
class Task:
    """A scored task; `search`, `validation` and `heldout` are disjoint and already in their
    seeded order."""

    name: str
    kind: Kind
    search: tuple[Example, ...]
    heldout: tuple[Example, ...]
    chance: float
    validation: tuple[Example, ...] = ()

    def examples(self, split: str = "search", n_examples: int | None = None) -> tuple[Example, ...]:
        """The first `n_examples` of `split` (all when None): a low budget is a prefix of a high one."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r} for task {self.name!r}; use one of {SPLITS}.")
        if n_examples is not None and n_examples < 1:
            raise TaskError(f"n_examples must be a positive integer or None, got {n_examples!r}.")
        examples = getattr(self, split)
        if not examples:
            raise TaskError(f"task {self.name!r} has no {split} examples; build it with make_task "
                            f"(which carves validation out of the search examples).")
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


def _hash_bit(key: str, digit: slice) -> int:
    return int(key[digit], 16) % 2


def carve_validation(search: Sequence[Example]) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(search, validation): half of the search examples, by a second stable content-hash digit
    (independent of the one that chose search over held-out), become validation; order is kept, so
    both stay in their seeded order. A set too small for the hash to fill both is halved by hash
    rank. Held-out is never touched."""
    keys = [example_key(ex) for ex in search]
    kept = [ex for ex, k in zip(search, keys, strict=True) if _hash_bit(k, slice(8, 16)) == 0]
    validation = [ex for ex, k in zip(search, keys, strict=True) if _hash_bit(k, slice(8, 16)) == 1]
    if len(search) >= 2 and (not kept or not validation):
        rank = {id(ex): r for r, (_, ex) in enumerate(sorted(zip(keys, search, strict=True),
                                                            key=lambda p: p[0]))}
        half = len(search) // 2
        kept = [ex for ex in search if rank[id(ex)] < half]
        validation = [ex for ex in search if rank[id(ex)] >= half]
    return tuple(kept), tuple(validation)


def make_task(name: str, search: Sequence[Example], heldout: Sequence[Example], source: str,
              validation: Sequence[Example] | None = None, *, carve: bool = False) -> Task:
    """Checks the splits are non-empty and of one kind, and computes the chance level.
    `carve` takes validation out of `search` by content hash (`carve_validation`): what every task
    source (files, datasets, lm-eval) does, so its third split is seed-independent. A task built
    in code with neither has no validation split (scoring it there is an error)."""
    if carve and validation is None:
        search, validation = carve_validation(search)
    validation = tuple(validation or ())
    required = {"search": search, "heldout": heldout, **({"validation": validation} if carve else {})}
    for split, examples in required.items():
        if not examples:
            raise TaskError(
                f"task {name!r} from {source} has an empty {split} split; it needs at least 2 "
                f"examples (or a non-empty {name}.{split}.jsonl; validation is carved from search)."
            )
    kinds = {example_kind(example) for example in (*search, *validation, *heldout)}
    if len(kinds) != 1:
        raise TaskError(f"task {name!r} from {source} mixes multiple-choice and text examples.")
    kind = kinds.pop()
    chance = 0.0
    if kind == "multiple_choice":
        choices = [len(ex.choices) for ex in (*search, *validation, *heldout)
                   if isinstance(ex, ChoiceExample)]
        chance = sum(1.0 / n for n in choices) / len(choices)
    return Task(name, kind, tuple(search), tuple(heldout), chance, validation)
