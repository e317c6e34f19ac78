"""`prune`: run config -> family -> calibration texts (search split) -> one baseline -> output.

Writes a passthrough mergekit recipe naming the baseline, or for LaCo a model folder (with its
removal set as a recipe inside). Checks the method, output path and tasks before weights load.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptailor_merge.baselines.core import (
    BaselineResult,
    Calibration,
    baseline_recipe,
    calibration_texts,
    canonical_name,
    get_baseline,
    run_baseline,
)
from gptailor_merge.core.config import DEMO, RunConfig
from gptailor_merge.core.errors import ConfigError, OutputExistsError, TaskError
from gptailor_merge.core.genome import resolve_target

logger = logging.getLogger(__name__)

RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class PruneOutcome:
    out: Path
    result: BaselineResult
    n_layers: int
    calibration_tasks: tuple[str, ...]
    n_texts: int
    repaired: Path | None = None  # the repaired model folder (--repair), where validation kept it
    repair_choice: dict | None = None  # repaired vs the recipe's model on validation (--repair)


def _check_output(method: str, out: Path, overwrite: bool) -> None:
    if method == "laco":
        if out.suffix in RECIPE_SUFFIXES:
            raise ConfigError(
                f"--out '{out}' is a recipe file, but LaCo's collapsed layers (layer l plus other "
                "layers' deltas) cannot be written as a mergekit recipe; pass a folder: LaCo "
                "writes the model there, with its removal set as laco_removal_recipe.yaml"
            )
        from gptailor_merge.core.outputs import prepare_output

        prepare_output(out, overwrite)
        return
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; {method} writes a recipe file, e.g. {out / 'recipe.yaml'}")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"recipe '{out}' exists; choose another --out or pass --overwrite")
    if out.exists():  # --overwrite replaces a recipe, never another kind of file
        from gptailor_merge.core.errors import RecipeError
        from gptailor_merge.materialize.recipe import Recipe

        try:
            Recipe.load(out)
        except (RecipeError, UnicodeDecodeError):
            raise OutputExistsError(f"--overwrite refuses to replace '{out}': it is not a mergekit recipe; "
                                    "choose another --out") from None


def _calibration_tasks(config: RunConfig, specs: Sequence[str] | None) -> list:
    from gptailor_merge.scoring import load_task, text_tasks

    seed = config.search.seed
    if specs:
        return [load_task(spec, seed=seed) for spec in specs]
    tasks = [load_task(spec, seed=seed) for spec in config.tasks]
    texts = text_tasks(tasks)
    if not texts:
        raise TaskError(
            f"the config's tasks ({', '.join(config.tasks)}) include no text (perplexity) task to "
            "calibrate on; pass --calibration TASK (a JSONL file of {\"text\": ...} lines)"
        )
    return texts


def prune(config: RunConfig, method: str, out: str | os.PathLike, *,
          calibration: Sequence[str] | None = None, n_calibration: int | None = 32,
          options: dict[str, Any] | None = None, overwrite: bool = False,
          progress: bool = True, repair: str | None = None, repair_out: str | os.PathLike | None = None,
          ridge: float | None = None, repair_texts: int | None = None, keep_repair: bool = False,
          repair_options: Mapping[str, Any] | None = None) -> PruneOutcome:
    """Prune `config`'s family to `config.target` with baseline `method`; write `out`. With `repair`
    ("linear"), also the repaired model folder `repair_out`, fitted on the search split of the same
    calibration tasks, `repair_texts` per task (default `repair.folder.REPAIR_TEXTS`), kept where it
    beats the recipe's model on validation (always with `keep_repair`; the comparison is reported)."""
    from transformers import AutoTokenizer

    from gptailor_merge.materialize.stitch import Stitcher
    from gptailor_merge.run.resolve import resolve_family

    get_baseline(method)  # unknown names fail before anything loads
    method = canonical_name(method)
    out = Path(out)
    if n_calibration is not None and n_calibration < 1:
        raise ConfigError(f"--n-calibration must be at least 1, got {n_calibration}")
    if repair_texts is not None and repair_texts < 1:
        raise ConfigError(f"--repair-texts must be at least 1, got {repair_texts}")
    _check_output(method, out, overwrite)
    if repair is not None:
        from gptailor_merge.repair.folder import check_repair_output

        repair_out = check_repair_output(repair, method, out, repair_out, overwrite)
    is_demo = config.family.base == DEMO
    tasks = None if is_demo else _calibration_tasks(config, calibration)
    family, _ = resolve_family(config, progress)
    tasks = tasks or _calibration_tasks(config, calibration)
    n_keep = resolve_target(family.n_layers, layers=config.target.layers,
                            remove_fraction=config.target.remove_fraction)
    texts = calibration_texts(tasks, n_calibration)
    ev = config.eval
    calib = Calibration(Stitcher(family, device=ev.device, dtype=ev.dtype),
                        AutoTokenizer.from_pretrained(family.base.path), tuple(texts),
                        batch_size=ev.batch_size, max_length=ev.max_length, progress=progress,
                        prefix_cache_bytes=ev.prefix_cache_bytes)
    result = run_baseline(method, calib, family.n_layers - n_keep, **(options or {}))
    meta = {"calibration": {"split": "search", "tasks": [t.name for t in tasks],
                            "n_examples_per_task": n_calibration, "n_texts": len(texts),
                            "max_length": ev.max_length},
            "baseline_options": dict(options or {})}
    recipe = baseline_recipe(result, family, dtype=ev.dtype, metadata=meta)
    if result.collapsed is not None:
        from gptailor_merge.baselines.laco import save_collapsed

        path = save_collapsed(calib, result, out, overwrite=overwrite, recipe=recipe)
    else:
        path = recipe.save(out)
    repaired = choice = None
    if repair is not None:
        repaired, choice = _repair_on_validation(config, family, calib, result.genome, recipe,
                                                 calibration or config.tasks, repair_texts, repair_out,
                                                 ridge, overwrite, keep_repair, dict(repair_options or {}))
    return PruneOutcome(path, result, family.n_layers, tuple(t.name for t in tasks), len(texts), repaired,
                        choice)


def _repair_on_validation(config: RunConfig, family, calib, genome, recipe, specs, repair_texts, repair_out,
                          ridge, overwrite, keep_anyway: bool, options: dict) -> tuple[Path | None, dict]:
    """Write the repaired folder, score it and the recipe's model on the validation split of the
    config's tasks, and keep the folder only where the repair wins (paired interval above zero)."""
    import shutil

    from gptailor_merge.repair.folder import REPAIR_TEXTS, record_choice, repair_pruned
    from gptailor_merge.run.repair_run import choose_repaired_folder
    from gptailor_merge.run.resolve import load_tasks
    from gptailor_merge.search.evaluator import build_evaluator

    folder = repair_pruned(calib, genome, recipe, specs, config, repair_texts or REPAIR_TEXTS, repair_out,
                           ridge=ridge, overwrite=overwrite, **options)
    evaluator = build_evaluator(config, family, load_tasks(config), stitcher=calib.stitcher,
                                tokenizer=calib.tokenizer)
    choice = choose_repaired_folder(evaluator, genome, folder)
    logger.info("repair: %s", choice["message"])
    if choice["kept"] or keep_anyway:
        record_choice(folder, choice)
        return folder, choice
    shutil.rmtree(folder)
    return None, choice
