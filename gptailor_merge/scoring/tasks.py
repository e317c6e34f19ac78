"""Tasks: named example sets with search, validation and held-out splits, in a fixed seeded order.

`load_task` takes a JSONL path, an `hf:NAME[:CONFIG]:SPLIT` or `disk:PATH[:SPLIT]` dataset spec,
or a name in `TASKS`; `register_task_dir` registers a folder of `*.search/*.heldout.jsonl` pairs
(validation is carved out of each search file by content hash, `task.carve_validation`).
Fidelity: `task.examples(split, n)` is a prefix of the seeded order. No torch, no model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.core.errors import TaskError
from gptailor_merge.core.registry import Registry, did_you_mean
from gptailor_merge.scoring.examples import Kind, read_jsonl
from gptailor_merge.scoring.task import (
    SOURCE_SPLITS,
    SPLITS,
    Task,
    make_task,
    shuffled,
    split_examples,
)

logger = logging.getLogger(__name__)

TaskLoader = Callable[..., "Task"]  # called as loader(seed=...); register with @TASKS.register(name)
TASKS: Registry[TaskLoader] = Registry("task")


def task_name_of(path: Path) -> str:
    """`dir/arc.search.jsonl` -> `arc`; `dir/arc.jsonl` -> `arc`."""
    name = path.name.removesuffix(".jsonl")
    for split in SPLITS:
        name = name.removesuffix(f".{split}")
    return name


def task_from_file(path: str | Path, *, seed: int = 0, name: str | None = None,
                   kind: Kind | None = None) -> Task:
    """Sibling `STEM.search.jsonl` + `STEM.heldout.jsonl` if both exist, else a seeded split of `path`."""
    path = Path(path)
    name = name or task_name_of(path)
    pair = [path.parent / f"{task_name_of(path)}.{split}.jsonl" for split in SOURCE_SPLITS]
    if all(p.is_file() for p in pair):
        search, heldout = (shuffled(read_jsonl(p, kind), seed) for p in pair)
        return make_task(name, search, heldout, f"{pair[0]} + {pair[1].name}", carve=True)
    search, heldout = split_examples(read_jsonl(path, kind), seed)
    return make_task(name, search, heldout, str(path), carve=True)


@dataclass(frozen=True)
class FileTaskLoader:
    """A registered task backed by a `search`/`heldout` JSONL pair (compared for idempotence)."""

    name: str
    search_path: Path
    heldout_path: Path
    kind: Kind | None = None

    def __call__(self, *, seed: int = 0) -> Task:
        search, heldout = (shuffled(read_jsonl(p, self.kind), seed)
                           for p in (self.search_path, self.heldout_path))
        return make_task(self.name, search, heldout, f"{self.search_path} + {self.heldout_path.name}",
                         carve=True)


def _register_pairs(folder: Path, kind: Kind, prefix: str, replace: bool) -> list[str]:
    names = []
    for search_path in sorted(folder.glob("*.search.jsonl")):
        stem = task_name_of(search_path)
        heldout_path = folder / f"{stem}.heldout.jsonl"
        if not heldout_path.is_file():
            raise TaskError(f"{search_path} has no held-out twin; add {heldout_path.name}.")
        loader = FileTaskLoader(f"{prefix}{stem}", search_path.resolve(), heldout_path.resolve(), kind)
        if replace:
            TASKS.add(loader.name, loader, replace=True)
        elif loader.name in TASKS:
            if TASKS.get(loader.name) != loader:
                raise TaskError(f"task {loader.name!r} is already registered from other files; "
                                f"rename {search_path.name} or its folder.")
        else:
            TASKS.add(loader.name, loader)
        names.append(loader.name)
    return names


def register_task_dir(directory: str | Path, *, replace: bool = False) -> list[str]:
    """Registers `DIR/tasks/{task}.{split}.jsonl` (multiple choice) and `DIR/text/{domain}.{split}.jsonl`
    (perplexity, as `ppl_{domain}`); returns the names. Registering the same files twice is a no-op;
    other files under a registered name are an error unless `replace` (a demo family of another
    preset or seed re-binds the demo task names)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TaskError(f"task folder {str(directory)!r} does not exist.")
    names = _register_pairs(directory / "tasks", "multiple_choice", "", replace)
    names += _register_pairs(directory / "text", "perplexity", "ppl_", replace)
    if not names:
        raise TaskError(f"no tasks in {directory}: expected tasks/*.search.jsonl or text/*.search.jsonl.")
    logger.debug("registered tasks %s from %s", names, directory)
    return names


def _unknown(spec: str) -> TaskError:
    hint = did_you_mean(spec, TASKS.names())
    known = ", ".join(TASKS.names()) or "(none registered)"
    return TaskError(
        f"unknown task {spec!r}.{hint} Known: {known}. Or pass a JSONL path, "
        f"'hf:NAME[:CONFIG]:SPLIT', 'disk:PATH' or 'lm_eval:NAME[@DIR]'."
    )


def load_task(spec: str | Path, *, seed: int = 0) -> Task:
    """A task from a registered name, a JSONL path, or a `hf:`/`disk:` dataset spec."""
    if isinstance(spec, Path):
        return task_from_file(spec, seed=seed)
    if spec.startswith("lm_eval:"):
        from gptailor_merge.scoring.lm_eval_bridge import task_from_lm_eval

        return task_from_lm_eval(spec, seed=seed)
    if spec.startswith(("hf:", "disk:")):
        from gptailor_merge.scoring.dataset_source import task_from_dataset

        return task_from_dataset(spec, seed=seed)
    if spec in TASKS:
        return TASKS.get(spec)(seed=seed)
    path = Path(spec)
    if path.is_file():
        return task_from_file(path, seed=seed)
    if spec.endswith((".jsonl", ".json")) or os.sep in spec:
        raise TaskError(f"task file {spec!r} does not exist.")
    raise _unknown(spec)
