"""`optimize --repair linear`: the finalists repaired, the repair kept only where validation says so.

Every contender of the validation pick (`search.selection`: the search's finalists and the baseline
seeds) is repaired with the run's settings (calibrated on the search split of every task,
`repair.calibration`) and scored repaired on validation; each keeps its repair only where the
repaired model beats its own unrepaired one with a paired interval above zero, and the pick is made
between the kept forms. Where the winner keeps its repair, its fitted maps are fused into a fresh
build and written as RUN_DIR/best_model_repaired/, scored on held-out and added to summary.json as
its own row; otherwise the run says so and hands back the recipe's model alone. The repaired model
is scored as a model, never through the evaluator's genome-keyed prefix cache (which knows only
unrepaired layers).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from gptailor_merge.core.genome import Genome
from gptailor_merge.materialize.recipe import Recipe

logger = logging.getLogger(__name__)

REPAIRED_DIR = "best_model_repaired"


def check_repair(method: str, tasks: Any, sources: str | None = None) -> None:
    """Before the search: a known method and a task to calibrate on."""
    from gptailor_merge.core.errors import ConfigError
    from gptailor_merge.repair.calibration import calibration_tasks
    from gptailor_merge.repair.folder import SOURCES, check_method

    check_method(method)
    if not calibration_tasks(tasks, sources or SOURCES):
        raise ConfigError("--repair needs a text (perplexity) task among the run's tasks to calibrate on; "
                          "add one (a JSONL file of {\"text\": ...} lines) or drop --repair")


class FinalistRepair:
    """The `search.selection.RepairScorer` of a run: fits a genome's repair with the run's settings
    on the evaluator's stitcher and scores the repaired model on validation. Keeps each fit's maps,
    so the winner's folder is written without fitting again. `overrides`: RepairSettings fields
    (sources, objective, ...) over the defaults."""

    def __init__(self, evaluator: Any, config: Any, *, ridge: float | None = None, **overrides: Any) -> None:
        from gptailor_merge.repair.fit import DEFAULT_RIDGE
        from gptailor_merge.repair.folder import (
            REPAIR_TEXTS,
            calibration_for,
            calibration_groups,
            settings_for,
            texts_digest,
        )

        ev = config.eval
        self.evaluator = evaluator
        fields = {"n_examples_per_task": REPAIR_TEXTS, "max_length": ev.max_length, "batch_size": ev.batch_size,
                  "dtype": ev.dtype, "device": ev.device, "ridge": DEFAULT_RIDGE if ridge is None else ridge}
        self.settings = settings_for(config.tasks, seed=config.search.seed, **{**fields, **overrides})
        self.texts = calibration_for(self.settings)
        self.groups = calibration_groups(self.settings)
        self.fits: dict[str, Any] = {}  # genome_id -> RepairInfo
        self.texts_sha256 = texts_digest(self.texts)
        # keys this repair's validation scores in the run's score cache: other settings, other key
        self.cache_tag = hashlib.sha256(f"{self.settings.model_dump_json()}|{self.texts_sha256}".encode()
                                        ).hexdigest()[:12]

    def repaired_model(self, genome: Genome) -> tuple[Any, Any]:
        """(the repaired model, its RepairInfo): fitted once per genome, rebuilt from its maps after."""
        from gptailor_merge.repair.fit import apply_maps, repair_model

        stitcher = self.evaluator.stitcher
        if genome.genome_id in self.fits:
            info = self.fits[genome.genome_id]
            return apply_maps(stitcher.build(genome), stitcher.family, genome, info.maps), info
        model, info = repair_model(stitcher.family, genome, self.texts, **self.settings.fit_options(),
                                   stitcher=stitcher, tokenizer=self.evaluator.tokenizer, text_groups=self.groups)
        self.fits[genome.genome_id] = info
        return model, info

    def __call__(self, genome: Genome, n_examples: int | None) -> tuple[Any, dict]:
        from gptailor_merge.scoring import evaluate_model

        ev = self.evaluator
        start = time.perf_counter()
        model, info = self.repaired_model(genome)
        fitted = time.perf_counter()
        score = evaluate_model(model, ev.tokenizer, ev.tasks, split="validation", n_examples=n_examples,
                               batch_size=ev.batch_size, max_length=ev.max_length,
                               shared_context=ev.shared_context)
        return score, {"fit_seconds": round(fitted - start, 2),
                       "score_seconds": round(time.perf_counter() - fitted, 2), "maps": len(info.maps)}


def write_repaired(run_dir: Path, repairer: FinalistRepair, winner: Any, config: Any,
                   summary: dict | None) -> Path | None:
    """The winner's repaired folder where it kept its repair on validation (None otherwise, with the
    reason in `summary["repair"]`); with held-out rows in `summary`, its held-out row too."""
    from gptailor_merge.repair.folder import record_choice, save_repaired

    record = winner.repair or {"kept": False, "message": "the winner removes no layer; nothing to repair"}
    block = {"settings": repairer.settings.model_dump(mode="json"), "kept": bool(winner.repaired),
             "message": record.get("message"), "validation": record}
    if not winner.repaired:
        logger.info("repair: %s; best_model/ is the deliverable", record.get("message"))
        if summary is not None:
            summary["repair"] = block
        return None
    family = repairer.evaluator.stitcher.family
    model, info = repairer.repaired_model(winner.genome)
    settings = repairer.settings.model_copy(update={"n_texts": len(repairer.texts),
                                                    "texts_sha256": repairer.texts_sha256})
    folder = save_repaired(model, family.base.path, Recipe.load(run_dir / "best.yaml"), info, settings,
                           run_dir / REPAIRED_DIR, overwrite=True)
    record_choice(folder, record)
    logger.info("repaired best model in %s (%d maps): %s", folder, len(info.maps), record.get("message"))
    if summary is not None:
        summary["best_model_repaired"] = str(folder)
        summary["repair"] = {**block, "settings": settings.model_dump(mode="json"), **info.to_json()}
        if summary.get("rows"):
            summary["rows"].append(_heldout_row(folder, repairer.evaluator, winner.genome, config,
                                                summary["counted_tasks"]))
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


def choose_repaired_folder(evaluator: Any, genome: Genome, folder: Path) -> dict:
    """`prune --repair`: the repaired folder against the recipe's model on every validation example;
    the decision record (`search.selection.repair_decision`). The caller removes a folder not kept."""
    from gptailor_merge.scoring import evaluate_model, load_model_folder
    from gptailor_merge.search.selection import evaluator_repair_decision

    reference = evaluator.reference("validation", None)
    unrepaired = evaluator.score(genome, "validation", None)
    model, tokenizer = load_model_folder(folder, device=evaluator.stitcher.device)
    repaired = evaluate_model(model, tokenizer, evaluator.tasks, split="validation",
                              batch_size=evaluator.batch_size, max_length=evaluator.max_length,
                              shared_context=evaluator.shared_context)
    return evaluator_repair_decision(evaluator, repaired, unrepaired, reference, {})[1]
