"""Tasks from `datasets`: `hf:NAME[:CONFIG]:SPLIT` (through `load_dataset`) or `disk:PATH[:SPLIT]`
(a `save_to_disk` folder). Rows use the same fields as JSONL tasks; one split is divided by the
seeded rule, and a saved DatasetDict with `search` and `heldout` splits is used as is.
Offline (`HF_HUB_OFFLINE=1`) works from local folders and the cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gptailor_merge.core.errors import TaskError
from gptailor_merge.scoring.examples import parse_records
from gptailor_merge.scoring.task import SOURCE_SPLITS, Task, make_task, shuffled, split_examples

logger = logging.getLogger(__name__)


def _load_hf(rest: str, spec: str) -> tuple[str, Any]:
    import datasets

    parts = rest.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise TaskError(f"bad dataset spec {spec!r}; use 'hf:NAME:SPLIT' or 'hf:NAME:CONFIG:SPLIT'.")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many types (hub, files, builder); name the spec
        raise TaskError(
            f"cannot load dataset {spec!r}: {type(error).__name__}: {error}. Offline, only local "
            f"folders and cached datasets load; check the name, config and split."
        ) from error
    task_name = name.rstrip("/").split("/")[-1] + (f"_{config}" if config else "")
    return task_name, dataset


def _load_disk(rest: str, spec: str) -> tuple[str, Any, str | None]:
    import datasets

    path, split = Path(rest), None
    if not path.exists() and ":" in rest:
        head, _, split = rest.rpartition(":")
        path = Path(head)
    if not path.exists():
        raise TaskError(f"dataset folder {str(path)!r} (from {spec!r}) does not exist.")
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # not a save_to_disk folder
        raise TaskError(f"cannot load {str(path)!r} with datasets.load_from_disk: {error}") from error
    return path.name, dataset, split


def task_from_dataset(spec: str, *, seed: int = 0) -> Task:
    """A task from a `hf:` or `disk:` spec (see the module docstring)."""
    import datasets

    scheme, _, rest = spec.partition(":")
    split = None
    if scheme == "hf":
        name, dataset = _load_hf(rest, spec)
    else:
        name, dataset, split = _load_disk(rest, spec)
    if isinstance(dataset, datasets.DatasetDict):
        if split is None and all(s in dataset for s in SOURCE_SPLITS):
            search, heldout = (shuffled(parse_records(dataset[s], f"{spec}[{s}]"), seed)
                               for s in SOURCE_SPLITS)
            validation = (shuffled(parse_records(dataset["validation"], f"{spec}[validation]"), seed)
                          if "validation" in dataset else None)  # else carved from search
            return make_task(name, search, heldout, spec, validation=validation, carve=True)
        if split is None and len(dataset) == 1:
            split = next(iter(dataset))
        if split not in dataset:
            raise TaskError(f"{spec!r} has splits {sorted(dataset)}; name one as 'disk:PATH:SPLIT', "
                            f"or save 'search' and 'heldout' splits.")
        dataset = dataset[split]
    search, heldout = split_examples(parse_records(dataset, spec), seed)
    logger.debug("task %s from %s: %d search, %d held-out", name, spec, len(search), len(heldout))
    return make_task(name, search, heldout, spec, carve=True)
