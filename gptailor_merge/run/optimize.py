"""`optimize`: config -> family -> search -> best recipe -> mergekit model -> held-out summary.

Owns the run folder: config.yaml, run.json, journal.jsonl, best.yaml, pareto/*.yaml, best_model/,
summary.md and summary.json. Checks everything cheap (config, tasks, family shapes, resume match)
before any weight loads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptailor_merge.core.config import DEMO, RunConfig, check_device
from gptailor_merge.core.errors import ConfigError, ModelNotFoundError, ResumeError
from gptailor_merge.core.genome import Genome, resolve_target
from gptailor_merge.family.family import is_local_path
from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
from gptailor_merge.run.resolve import load_tasks, resolve_family
from gptailor_merge.search.journal import Trial, write_json_atomic
from gptailor_merge.search.space import SearchSpace

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    run_dir: Path
    summary: dict
    best_recipe: Path | None


def optimize(config: RunConfig, *, resume: Path | None = None, progress: bool = True,
             requested: RunConfig | None = None, workers: int | None = None,
             ray_address: str | None = None, heldout: bool = True, repair: str | None = None,
             repair_options: Mapping[str, Any] | None = None,
             seed_removals: SeedRemovals | None = None) -> RunOutcome:
    """The main job. `requested` is a config given alongside --resume: it must match the run's.
    `workers` / `ray_address` override the (saved) config's: they change where trials run, not
    what is searched, so a resumed run may use another number of them (a parallel journal needs 2+).
    `heldout=False` stops after the recipes are saved (summary.json holds the search alone): for
    callers that score the best recipe themselves, such as benchmarks/quality.py --lean.
    `repair="linear"` repairs the validation contenders and, where the winner keeps its repair there,
    writes best_model_repaired/ (gptailor_merge.run.repair_run) and, with the
    held-out summary, its row. `seed_removals`: the baseline seeds a caller already computed on the
    run's calibration (the quality benchmark's baseline rows), so greedy-ppl is not run again."""
    from gptailor_merge.run.run_folder import open_fresh, open_resumed

    if resume is None:  # checked before the run folder is made, so a missing Ray leaves nothing behind
        config = _with_workers(config, workers, ray_address)
        _check_workers(config, None)
        check_device(config.eval.device)
        run = open_fresh(config)
    else:  # locked first, so a second optimize on this folder stops here
        run = open_resumed(resume, requested)
    failed = True
    try:
        config = run.config
        if resume is not None:
            config = _with_workers(config, workers, ray_address)
            _check_workers(config, run.run_dir)
            check_device(config.eval.device, f"{run.run_dir / 'config.yaml'}: eval.device")
        outcome = _optimize_locked(config, run.run_dir, resume is not None, progress, heldout, repair,
                                   dict(repair_options or {}), seed_removals)
        failed = False
        return outcome
    finally:
        run.close(failed)


def _optimize_locked(config: RunConfig, run_dir: Path, resumed: bool, progress: bool,
                     heldout: bool, repair: str | None, repair_options: dict,
                     given_seeds: SeedRemovals | None) -> RunOutcome:
    """The run itself, in its locked folder."""
    from gptailor_merge.run.run_folder import check_fingerprint, clamp_max_examples, fingerprint
    from gptailor_merge.search.evaluator import build_evaluator

    start = time.perf_counter()
    non_demo_tasks = load_tasks(config) if config.family.base != DEMO else None
    try:
        family, names = resolve_family(config, progress)
    except ModelNotFoundError as exc:
        if not (resumed and is_local_path(exc.model) and not Path(exc.model).expanduser().exists()):
            raise  # a fresh run, a Hub id, or a folder that is there but not a model: the plain error
        raise ResumeError(f"model folder '{exc.model}' does not exist, and run '{run_dir}' was searched on it "
                          "(its config.yaml and run.json name that path): put the model back there (a symlink to "
                          "where it is now will do), then resume") from None
    tasks = non_demo_tasks or load_tasks(config)
    if repair is not None:  # before the search, not after it
        from gptailor_merge.run.repair_run import check_repair

        check_repair(repair, tasks, repair_options.get("sources"))
    n_keep = resolve_target(family.n_layers, layers=config.target.layers,
                            remove_fraction=config.target.remove_fraction)
    config, clamped = clamp_max_examples(config, tasks)
    check_fingerprint(run_dir, fingerprint(config, family, n_keep, tasks), resumed)

    s = config.search
    space = search_space(config, family, n_keep)
    logger.info("%s; keeping %d of %d layers", family.summary().splitlines()[0], n_keep, family.n_layers)
    ev = config.eval
    evaluator = build_evaluator(config, family, tasks)
    stitcher, tokenizer = evaluator.stitcher, evaluator.tokenizer
    seed_removals, calibration_seconds = (
        run_seed_removals(run_dir, stitcher, tokenizer, tasks, family.n_layers - n_keep, ev,
                          s.calibration_texts, given_seeds) if s.seeds else ({}, 0.0))
    result = _search(config, space, evaluator, run_dir, list(seed_removals.values()), progress)
    budgets = {"max_examples": config.search.max_examples, "rungs": config.search.rungs(),
               "n_trials": config.search.n_trials, "max_examples_clamped_from": clamped and clamped["asked"]}
    if result.best is None:
        raise ConfigError("no trial finished at full fidelity; raise search.n_trials or the time budget")

    from gptailor_merge.search.score_cache import VALIDATION_SCORES, ScoreCache
    from gptailor_merge.search.selection import select_on_validation

    repairer = None
    if repair is not None:
        from gptailor_merge.run.repair_run import FinalistRepair

        repairer = FinalistRepair(evaluator, config, **repair_options)
    selection = select_on_validation(evaluator, result.trials, result.rungs[-1], seed_removals,
                                     finalists=s.finalists, n_examples=s.validation_examples,
                                     progress=progress, repair=repairer,
                                     cache=ScoreCache(run_dir / VALIDATION_SCORES))
    logger.info("%s", selection.message)
    refs = FamilyRefs.of(family)
    best_genome = selection.winner.genome
    best_recipe = _save_recipe(best_genome, refs, selection.winner.trial, run_dir / "best.yaml",
                               ev.dtype, selection)
    pareto_dir = run_dir / "pareto"
    pareto_dir.mkdir(exist_ok=True)
    for trial in result.pareto:
        _save_recipe(Genome.from_dict(trial.genome), refs, trial, pareto_dir / f"{trial.genome_id}.yaml", ev.dtype)

    if not heldout:
        summary = {"best_genome": best_genome.to_dict(), "best_recipe": str(best_recipe),
                   "best_layer_map": best_genome.describe(), "selection": selection.to_dict(),
                   "search": {**result.summary(), "workers": s.workers, "budgets": budgets,
                              "seed_calibration_seconds": round(calibration_seconds, 1)},
                   "rows": [], "mergekit_vs_stitch_max_abs_diff": None,
                   "wall_seconds": round(time.perf_counter() - start, 1)}
        if repairer is not None:
            from gptailor_merge.run.repair_run import write_repaired

            write_repaired(run_dir, repairer, selection.winner, config, summary)
        write_json_atomic(run_dir / "summary.json", summary)
        return RunOutcome(run_dir, summary, best_recipe)

    from gptailor_merge.run.heldout import heldout_summary

    summary = heldout_summary(family, names, evaluator, selection, result, run_dir, config)
    summary["search"]["workers"] = s.workers
    summary["search"]["budgets"] = budgets
    summary["search"]["seed_calibration_seconds"] = round(calibration_seconds, 1)
    if repairer is not None:
        from gptailor_merge.run.repair_run import write_repaired

        write_repaired(run_dir, repairer, selection.winner, config, summary)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(run_dir / "summary.json", summary)
    from gptailor_merge.run.heldout import summary_markdown

    (run_dir / "summary.md").write_text(summary_markdown(summary))
    try:
        from gptailor_merge.share.report import write_report

        write_report(run_dir)
    except Exception as exc:  # a figure must never cost a finished run its results
        logger.warning("report not written (%s); run `python -m gptailor_merge report %s`", exc, run_dir)
    return RunOutcome(run_dir, summary, best_recipe)


def search_space(config: RunConfig, family, n_keep: int) -> SearchSpace:
    """The run's search space from its config (benchmarks rebuild the same one for its seeds)."""
    s = config.search
    return SearchSpace(family.n_layers, family.n_candidates, n_keep, methods=s.merge_methods,
                       lambda_range=s.lambda_range, density_range=s.density_range,
                       max_sources=s.max_sources, allow_candidates=s.use_candidates)


def _with_workers(config: RunConfig, workers: int | None, ray_address: str | None) -> RunConfig:
    if workers is None and ray_address is None:
        return config
    search = config.search.model_dump(mode="json")
    search.update({k: v for k, v in (("workers", workers), ("ray_address", ray_address)) if v is not None})
    data = config.model_dump(mode="json") | {"search": search}
    return RunConfig.from_dict(data, source="--workers/--ray-address")


def _check_workers(config: RunConfig, resumed: Path | None) -> None:
    """Before any weight loads: Ray is installed when workers are asked for. (Any journal resumes
    with any number of workers: the one loop, `search.loop`, replays either kind.)"""
    if config.search.workers > 1:
        from gptailor_merge.run.parallel import require_ray

        require_ray(config.search.workers)


def _search(config: RunConfig, space: SearchSpace, evaluator, run_dir: Path, extra_seeds: list,
            progress: bool):
    """The search loop over a pool of one (in this process), or of Ray workers when
    search.workers > 1."""
    from gptailor_merge.search.loop import run_search, run_search_async

    s = config.search
    kwargs = dict(optimizer=s.optimizer, n_trials=s.n_trials, rungs=s.rungs(), eta=s.eta,
                  promotion=s.promotion, race_z=s.race_z, seed=s.seed,
                  time_budget_s=s.time_budget_s, use_seeds=s.seeds, extra_seed_removals=extra_seeds,
                  seed_fraction=s.seed_fraction, local_fraction=s.local_fraction, progress=progress)
    if s.workers == 1:
        return run_search(space, evaluator, run_dir, **kwargs)
    from gptailor_merge.run.parallel import WorkerSpec, ray_pool

    with ray_pool(WorkerSpec(config), s.workers, address=s.ray_address) as pool:
        return run_search_async(space, pool, run_dir, **kwargs)


SEED_FILE = "baseline_seeds.json"


@dataclass(frozen=True)
class SeedRemovals:
    """The single-model baselines' removal sets by method and the seconds computing them took:
    what `baseline_seed_removals` returns, handed in by a caller that has them already."""

    removals: Mapping[str, Sequence[int]]
    seconds: float

    def checked(self) -> dict[str, list[int]]:
        """By seed method, in `DEFAULT_SEED_METHODS` order; every one must be there (any spelling)."""
        from gptailor_merge.baselines.core import DEFAULT_SEED_METHODS, canonical_name

        by_name = {canonical_name(m): list(r) for m, r in self.removals.items()}
        missing = [m for m in DEFAULT_SEED_METHODS if canonical_name(m) not in by_name]
        if missing:
            raise ValueError(f"seed_removals must name every seed method; missing {missing}")
        return {m: by_name[canonical_name(m)] for m in DEFAULT_SEED_METHODS}


def _seed_texts(tasks, n_texts: int) -> list[str]:
    from gptailor_merge.baselines import calibration_texts
    from gptailor_merge.scoring.task import text_tasks

    calibration_tasks = text_tasks(tasks)
    return calibration_texts(calibration_tasks, n_texts) if calibration_tasks else []


def baseline_seed_removals(stitcher, tokenizer, tasks, n_remove: int, ev, n_texts: int = 32
                           ) -> tuple[dict[str, list[int]], float]:
    """Removal sets of the single-model baselines (ShortGPT, angular, reverse, greedy-ppl) by
    name, calibrated on `n_texts` search-split texts of each perplexity task; they join the seeds
    and are judged against the finalists on validation. Returns them with the seconds their
    calibration took."""
    from gptailor_merge.baselines import Calibration, baseline_removals

    texts = _seed_texts(tasks, n_texts)
    if not texts or n_remove == 0:
        return {}, 0.0
    t0 = time.perf_counter()
    calib = Calibration(stitcher, tokenizer, tuple(texts), batch_size=ev.batch_size,
                        max_length=ev.max_length, prefix_cache_bytes=ev.prefix_cache_bytes)
    removals = baseline_removals(calib, n_remove)
    logger.info("baseline seeds: %s", removals)
    return {m: list(r) for m, r in removals.items()}, time.perf_counter() - t0


def run_seed_removals(run_dir: Path, stitcher, tokenizer, tasks, n_remove: int, ev, n_texts: int,
                      given: SeedRemovals | None = None) -> tuple[dict[str, list[int]], float]:
    """`baseline_seed_removals` (or the `given` ones), kept in the run folder so a resumed run does
    not calibrate again (the fingerprint check has already made sure the settings are the run's own)."""
    path = run_dir / SEED_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        return dict(zip(data["methods"], data["removals"], strict=True)), data["seconds"]
    if given is not None:
        removals, seconds = given.checked(), given.seconds
    else:
        removals, seconds = baseline_seed_removals(stitcher, tokenizer, tasks, n_remove, ev, n_texts)
    write_json_atomic(path, {"methods": list(removals), "removals": list(removals.values()),
                             "seconds": round(seconds, 3), "n_texts": n_texts,
                             "computed_by": "caller" if given is not None else "this run"})
    return removals, seconds


def _save_recipe(genome: Genome, refs: FamilyRefs, trial: Trial | None, path: Path, dtype: str,
                 selection=None) -> Path:
    meta: dict = {"trial": trial.index if trial else None}
    if trial is not None:
        meta["search_scores"] = {"n_examples": trial.fidelity, "retention": round(trial.retention, 6),
                                 "tasks": trial.rungs[-1].metrics}
    if selection is not None:
        meta["selection"] = {"source": selection.source, "message": selection.message,
                             "validation_objective": selection.winner.to_dict()["validation_objective"]}
    return genome_to_recipe(genome, refs, dtype=dtype, metadata=meta).save(path)
