"""Any lm-evaluation-harness task on an in-memory model, through lm-eval's own API.

Wraps the loaded `PreTrainedModel` in `lm_eval.models.huggingface.HFLM` and calls
`lm_eval.simple_evaluate`; returns `{task: {metric: value}}` with lm-eval's ",filter" suffixes
dropped. Optional dependency: `pip install lm-eval` (tested with 0.4.13).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptailor_merge.core.errors import TaskError

logger = logging.getLogger(__name__)

INSTALL_HINT = "the lm-eval bridge needs lm-evaluation-harness: pip install lm-eval"


def _import_lm_eval() -> Any:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (checks the HF backend imports)
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return lm_eval


def _metrics(raw: dict[str, Any]) -> dict[str, float]:
    """`{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}` -> `{"acc": 0.5}`."""
    metrics = {}
    for key, value in raw.items():
        if "," not in key or isinstance(value, str) or isinstance(value, bool):
            continue
        metric, _, filter_name = key.partition(",")
        metrics[metric if filter_name == "none" else f"{metric},{filter_name}"] = float(value)
    return metrics


def evaluate_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str], *,
                     include_path: str | Path | None = None, include_defaults: bool = True,
                     limit: int | float | None = None, num_fewshot: int | None = None,
                     batch_size: int = 16, max_length: int | None = None,
                     seed: int | None = None) -> dict[str, dict[str, float]]:
    """lm-eval metrics of `tasks` for a loaded `transformers` model; `include_path` adds a folder
    of task YAMLs, `include_defaults=False` skips indexing lm-eval's own tasks (faster); `seed`
    None keeps lm-eval's default seeds."""
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_defaults)
    missing = [task for task in tasks if task not in manager.all_tasks]
    if missing:
        raise TaskError(f"lm-eval does not know task(s) {missing}; add their YAML folder as "
                        f"include_path (searched: {include_path or 'lm-eval defaults only'}).")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    seeds = {} if seed is None else {f"{kind}_seed": seed for kind in
                                      ("random", "numpy_random", "torch_random", "fewshot_random")}
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        bootstrap_iters=0, log_samples=False, **seeds,
    )
    scores = {name: _metrics(raw) for name, raw in results["results"].items()}
    logger.info("lm-eval scores: %s", scores)
    return scores


def task_from_lm_eval(spec: str, *, seed: int = 0):
    """`lm_eval:NAME[@INCLUDE_DIR]` -> a `Task` built from lm-eval's own prompt functions.

    lm-eval's `doc_to_text` / `doc_to_choice` / `doc_to_target` define context, choices and answer
    (zero-shot), so the search scores exactly lm-eval's requests with our batched scorer. Only
    `multiple_choice` tasks with one context per document are supported.
    """
    from gptailor_merge.scoring.examples import ChoiceExample
    from gptailor_merge.scoring.task import make_task, split_examples

    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    name, _, include = spec.removeprefix("lm_eval:").partition("@")
    manager = TaskManager(include_path=include or None, include_defaults=not include)
    if name not in manager.all_tasks:
        raise TaskError(f"lm-eval does not know task {name!r} (spec {spec!r}); check the name "
                        "with `lm-eval ls tasks`, or add its YAML folder as lm_eval:NAME@DIR.")
    task = manager.load_task_or_group([name])[name]
    if task.OUTPUT_TYPE != "multiple_choice":
        raise TaskError(f"lm-eval task {name!r} is {task.OUTPUT_TYPE}; only multiple_choice tasks "
                        "can be scored by log-likelihood here (use the lm-eval bridge instead).")
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    if docs is None:
        raise TaskError(f"lm-eval task {name!r} has neither test nor validation documents")
    examples = []
    for i, doc in enumerate(docs):
        context, choices, target = task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)
        if not isinstance(context, str):
            raise TaskError(f"lm-eval task {name!r} has several contexts per document (like "
                            "winogrande); it is not supported as a search task")
        if isinstance(target, str):
            target = list(choices).index(target)
        if not 0 <= int(target) < len(choices):
            raise TaskError(f"lm-eval task {name!r} document {i}: answer {target} out of range")
        examples.append(ChoiceExample(context, tuple(str(c) for c in choices), int(target)))
    search, heldout = split_examples(examples, seed)
    return make_task(name, search, heldout, source=spec, carve=True)
