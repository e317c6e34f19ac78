"""What a repair is fitted on: the search split of the run's tasks, as token sequences.

A map fitted on prose alone pulls the residual stream towards the base on prose and away from what
the merged layers do on the tasks (SmolLM2 at 25%: arithmetic 0.531 -> 0.406 after a text-only
repair). So with `sources="all"` every objective task feeds the fit: a perplexity task its texts, a
multiple-choice task each example's context followed by its gold continuation, which are the
positions the scorer reads. Each task gives its first `n_examples` search examples (a per-task
count, so no task is drowned by another's size). Never reads validation or held-out.
"""

from __future__ import annotations

from collections.abc import Sequence

from gptailor_merge.core.errors import TaskError
from gptailor_merge.scoring.examples import ChoiceExample, Example, TextExample
from gptailor_merge.scoring.multiple_choice import continuation
from gptailor_merge.scoring.task import Task

SOURCES = ("text", "all")
"""`text`: the perplexity tasks' texts only (ReplaceMe's calibration); `all`: every task's."""

BALANCES = ("examples", "tokens")
"""How the calibration tasks weigh in the fit. `examples`: every token counts once, so a task weighs
by its tokens (a multiple-choice context of ~15 tokens against a 256-token text: SmolLM2's four
multiple-choice tasks give under a tenth of the fit's tokens with `all`). `tokens`: each task's
tokens are weighted so that every task has the same total weight (a per-task token budget without
repeating examples)."""


def example_text(example: Example) -> str:
    """The sequence a repair sees for one example: a text as is; a multiple-choice example's
    context and gold continuation exactly as the scorer joins them (`" " + choice`)."""
    if isinstance(example, TextExample):
        return example.text
    if isinstance(example, ChoiceExample):
        return example.context + continuation(example.choices[example.answer])
    raise TaskError(f"cannot calibrate on a {type(example).__name__}")


def calibration_tasks(tasks: Sequence[Task], sources: str) -> list[Task]:
    """The tasks a repair with `sources` calibrates on."""
    if sources not in SOURCES:
        raise TaskError(f"unknown calibration sources {sources!r}; use one of {', '.join(SOURCES)}")
    return [t for t in tasks if sources == "all" or t.kind == "perplexity"]


def repair_texts(tasks: Sequence[Task], n_examples: int | None, sources: str = "text") -> list[str]:
    """The first `n_examples` search examples of each calibration task, as sequences (in task order)."""
    chosen = calibration_tasks(tasks, sources)
    if not chosen:
        raise TaskError("no task to calibrate the repair on: give a text (perplexity) task, or use "
                        "sources 'all' to calibrate on the multiple-choice tasks too")
    return [example_text(ex) for task in chosen for ex in task.examples("search", n_examples)]


def repair_groups(tasks: Sequence[Task], n_examples: int | None, sources: str = "text") -> list[int]:
    """For each sequence of `repair_texts` (same arguments), the index of its calibration task."""
    chosen = calibration_tasks(tasks, sources)
    return [k for k, task in enumerate(chosen) for _ in task.examples("search", n_examples)]
