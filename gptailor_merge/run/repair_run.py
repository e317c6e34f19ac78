"""`optimize --repair linear`: the run's best recipe, repaired, as RUN_DIR/best_model_repaired/.

Calibrated on the search split of the run's text tasks (`REPAIR_TEXTS` per task); scored
on the held-out split and added to summary.json as its own row. The repaired model is scored as a
model, never through the evaluator's genome-keyed prefix cache (which knows only unrepaired layers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gptailor_merge.core.genome import Genome
from gptailor_merge.materialize.recipe import Recipe

logger = logging.getLogger(__name__)

REPAIRED_DIR = "best_model_repaired"


def check_repair(method: str, tasks: Any) -> None:
    """Before the search: a known method and a text task to calibrate on."""
    from gptailor_merge.core.errors import ConfigError
    from gptailor_merge.repair.folder import check_method
    from gptailor_merge.scoring.task import text_tasks

    check_method(method)
    if not text_tasks(tasks):
        raise ConfigError("--repair needs a text (perplexity) task among the run's tasks to calibrate on; "
                          "add one (a JSONL file of {\"text\": ...} lines) or drop --repair")


def repair_best(run_dir: Path, evaluator: Any, best_genome: Genome, config: Any, summary: dict | None, *,
                ridge: float | None = None) -> Path:
    """Write the repaired best model; with a held-out `summary`, score it and append its row."""
    from gptailor_merge.repair.fit import DEFAULT_RIDGE
    from gptailor_merge.repair.folder import (
        REPAIR_TEXTS,
        repair_and_save,
        settings_for,
    )

    ev = config.eval
    settings = settings_for(config.tasks, seed=config.search.seed, n_examples_per_task=REPAIR_TEXTS,
                            max_length=ev.max_length, batch_size=ev.batch_size, dtype=ev.dtype, device=ev.device,
                            ridge=DEFAULT_RIDGE if ridge is None else ridge)
    recipe = Recipe.load(run_dir / "best.yaml")
    stitcher = evaluator.stitcher
    folder, info = repair_and_save(stitcher.family, best_genome, recipe, settings, run_dir / REPAIRED_DIR,
                                   stitcher=stitcher,
                                   tokenizer=evaluator.tokenizer, overwrite=True)
    logger.info("repaired best model in %s (%d maps)", folder, len(info.maps))
    if summary is not None and summary.get("rows"):
        summary["rows"].append(_heldout_row(folder, evaluator, best_genome, config,
                                            summary["counted_tasks"]))
        summary["best_model_repaired"] = str(folder)
        summary["repair"] = {"settings": settings.model_dump(mode="json"), **info.to_json()}
    return folder


def _heldout_row(folder: Path, evaluator: Any, genome: Genome, config: Any, counted) -> dict:
    from gptailor_merge.run.heldout import _row
    from gptailor_merge.scoring import evaluate_model, load_model_folder

    n = config.eval.heldout_examples
    model, tokenizer = load_model_folder(folder, device=config.eval.device)
    score = evaluate_model(model, tokenizer, evaluator.tasks, split="heldout", n_examples=n,
                           batch_size=evaluator.batch_size, max_length=evaluator.max_length,
                           shared_context=evaluator.shared_context)
    base = evaluator.reference("heldout", n)
    family = evaluator.stitcher.family
    return _row("gptailor-best+repair", "tailored+repair", genome.n_kept,
                family.params_with_layers(genome.kept), score, base, counted, evaluator)
