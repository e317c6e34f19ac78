"""Scoring: perplexity plus multiple-choice tasks on an in-memory causal LM, at a fidelity budget.

A model, its tokenizer and `Task`s go in; a frozen `Score` comes out. Never sees recipes, genomes
or the search. The optional lm-eval bridge lives in `scoring.lm_eval_bridge`.
"""

from gptailor_merge.scoring.evaluate import (
    Score,
    TaskScore,
    evaluate_model,
    load_model_folder,
    score_to_json,
    task_loss,
)
from gptailor_merge.scoring.examples import ChoiceExample, Example, TextExample
from gptailor_merge.scoring.objectives import (
    Retention,
    chance_level_tasks,
    counted_tasks,
    log_ratios,
    mean_of_ratios,
    symmetric_retention,
)
from gptailor_merge.scoring.task import Task, text_tasks
from gptailor_merge.scoring.tasks import TASKS, load_task, register_task_dir

__all__ = [
    "text_tasks",
    "TASKS",
    "ChoiceExample",
    "Example",
    "Score",
    "Task",
    "TaskScore",
    "TextExample",
    "evaluate_model",
    "load_model_folder",
    "load_task",
    "chance_level_tasks",
    "Retention",
    "counted_tasks",
    "log_ratios",
    "mean_of_ratios",
    "register_task_dir",
    "symmetric_retention",
    "score_to_json",
    "task_loss",
]
