"""The scorer: an in-memory causal LM + tokenizer + tasks in, a frozen `Score` out.

Runs each task on the first `n_examples` of a split (the fidelity budget), multiple choice or
perplexity by the task's kind; `task_loss` turns a task score into a lower-is-better number.
Never sees recipes, genomes or the search.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptailor_merge.core.config import DEFAULT_MAX_LENGTH
from gptailor_merge.core.errors import ModelNotFoundError, TaskError
from gptailor_merge.scoring.examples import ChoiceExample, Kind, TextExample
from gptailor_merge.scoring.multiple_choice import multiple_choice_details
from gptailor_merge.scoring.perplexity import perplexity_details
from gptailor_merge.scoring.task import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskScore:
    """Metrics of one task: acc, acc_norm, n (multiple choice) or ppl, nll, n, tokens (perplexity)."""

    task: str
    metrics: dict[str, float]
    # per example, in example order: `acc`/`acc_norm` (0/1) or `nll_sum`/`tokens`; what paired
    # bootstrap intervals resample (scoring.yardstick). Not journaled: held-out rows keep it.
    per_example: dict[str, tuple[float, ...]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Score:
    """All task scores of one model on one split at one budget (`n_examples` None = all)."""

    split: str
    n_examples: int | None
    tasks: dict[str, TaskScore]


def score_task(model: nn.Module, tokenizer: Any, task: Task, *, split: str = "search",
               n_examples: int | None = None, batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH,
               progress: bool = False, boundaries: Sequence[int] = (),
               shared_context: bool | None = None) -> TaskScore:
    """One task on the first `n_examples` of `split`; `boundaries` and `shared_context` as in
    `evaluate_model`."""
    examples = task.examples(split, n_examples)
    if task.kind == "multiple_choice":
        choice_examples = [ex for ex in examples if isinstance(ex, ChoiceExample)]
        metrics, per_example = multiple_choice_details(
            model, tokenizer, choice_examples, batch_size=batch_size, max_length=max_length,
            progress=progress, boundaries=boundaries, shared_context=shared_context)
    else:
        texts = [ex.text for ex in examples if isinstance(ex, TextExample)]
        metrics, per_example = perplexity_details(
            model, tokenizer, texts, batch_size=batch_size, max_length=max_length,
            progress=progress, boundaries=boundaries)
    return TaskScore(task.name, metrics, per_example)


def evaluate_model(model: nn.Module, tokenizer: Any, tasks: Sequence[Task], *,
                   split: str = "search", n_examples: int | None = None, batch_size: int = 16,
                   max_length: int = DEFAULT_MAX_LENGTH, progress: bool = False,
                   boundaries: Sequence[int] = (), shared_context: bool | None = None) -> Score:
    """Scores every task; a budget-b score uses a prefix of the examples of a budget-B one.

    `boundaries` (example counts, e.g. the search's rung budgets) restart the length-sorted
    batching, so a budget-b run's batches open a budget-B run's and prefix reuse spans rungs;
    they change no result beyond float rounding of the batch shapes. `shared_context`: multiple
    choice in packed rows (None: where the model supports it; False: one sequence per choice)."""
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise TaskError(f"task names must be unique, got {names}.")
    was_training = model.training
    model.eval()
    scores = {}
    try:
        for task in tasks:
            start = time.perf_counter()
            scores[task.name] = score_task(model, tokenizer, task, split=split, n_examples=n_examples,
                                           batch_size=batch_size, max_length=max_length,
                                           progress=progress, boundaries=boundaries,
                                           shared_context=shared_context)
            logger.debug("%s (%s, n=%s): %s in %.1fs", task.name, split, n_examples,
                        scores[task.name].metrics, time.perf_counter() - start)
    finally:
        model.train(was_training)
    return Score(split, n_examples, scores)


def task_loss(task_score: TaskScore, kind: Kind) -> float:
    """Lower is better: 1 - acc for multiple choice, mean NLL for perplexity."""
    if kind == "multiple_choice":
        return 1.0 - task_score.metrics["acc"]
    if kind == "perplexity":
        return task_score.metrics["nll"]
    raise TaskError(f"unknown task kind {kind!r}; use 'multiple_choice' or 'perplexity'.")


def score_to_json(score: Score, model_name: str) -> dict[str, Any]:
    """`{"model", "split", "n_examples", "tasks": {TASK: {METRIC: value}}}`."""
    return {
        "model": model_name,
        "split": score.split,
        "n_examples": score.n_examples,
        "tasks": {name: dict(task_score.metrics) for name, task_score in score.tasks.items()},
    }


def load_model_folder(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """(model in eval mode on `device`, tokenizer) from a saved model folder; `dtype` None keeps
    the checkpoint's dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model folder {str(path)!r} has no config.json; pass a folder written by "
            f"save_pretrained or mergekit.", model=str(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer
