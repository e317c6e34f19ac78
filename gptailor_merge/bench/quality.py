"""Quality: held-out scores of GPTailor against the family, single-model pruning and its own ablations.

Rows, all scored on the same held-out examples with one yardstick (`retention_sym`: exp(mean log
ratio) against the dense base, `scoring.objectives`) and paired bootstrap intervals:
- `member-<name>`: the real family members, loaded from their own folders;
- baselines per removal fraction: reverse, ShortGPT, angular, greedy perplexity, LaCo (calibrated
  on the search split with the same texts as the search's own baseline seeds);
- ablations: `uniform-merge` (the best baseline's removal set, every kept layer a task-arithmetic
  merge of all fine-tunes, lambda picked among the seed scales on the search split),
  `gptailor-seeds-only` (the best seed, every seed scored at full fidelity, no optimizer trial),
  `gptailor-no-seeds`, `gptailor-random` (random proposals, no seeds, no local moves),
  `gptailor-removal-only`, and `gptailor` (the full search), each with the same trial budget;
- `+repair` rows: the linear repair of the cuts (`gptailor_merge.repair.fit`) on ShortGPT, greedy-ppl
  and GPTailor's winner;
- `gptailor-repair-pick`: what `optimize --repair linear` hands a user: the full search's journal,
  every validation contender repaired, the pick made among each one's kept form (repaired only
  where validation says so), then that deliverable scored.
Every row is also scored on transfer texts that no family member and no search saw
(`gptailor_merge/bench/transfer.py`). Prints the tables and writes JSON (git SHA, hardware, settings, rows
with per-example values, so intervals can be recomputed and a run resumed).

    python benchmarks/quality.py --family demo|smollm2 [--remove 0.25 ...] [--trials 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.bench import environment as env
from gptailor_merge.bench.environment import SMOLLM2_DIR, smollm2_root

DEMO_FRACTIONS = (0.125, 0.25, 0.375)
SMOLLM2_FRACTIONS = (0.25,)
BASELINE_METHODS = ("reverse", "shortgpt", "angular", "greedy-ppl", "laco")
REPAIRED_BASELINES = ("shortgpt", "greedy-ppl")
# (row, search settings): ablations first, the full search last
SEARCH_ROWS = (
    ("gptailor-removal-only", {"use_candidates": False}),
    ("gptailor-no-seeds", {"seeds": False}),
    ("gptailor-random", {"seeds": False, "optimizer": "RandomSearch", "local_fraction": 0.0}),
    ("gptailor", {}),
)
SMOLLM2_MEMBERS = ("base", "prose", "code", "math")
SMOLLM2_BUILDER = "benchmarks/smollm2_family.py"
N_BOOT = 2000


# ---- family and tasks -------------------------------------------------------------------------

def family_config(args: argparse.Namespace) -> dict:
    """The `family` and `tasks` parts of a RunConfig for `--family` (tasks registered here)."""
    from gptailor_merge.core.config import DEMO, DEMO_TASKS

    if args.family == "demo":
        return {"family": {"base": DEMO, "demo_preset": args.demo_preset}, "tasks": list(DEMO_TASKS)}
    from gptailor_merge.scoring import register_task_dir

    root = smollm2_root()
    missing = [m for m in SMOLLM2_MEMBERS if not (root / m / "config.json").is_file()]
    if missing or not any((root / d).is_dir() for d in ("tasks", "text")):
        what = ", ".join(f"{m}/" for m in missing) or "tasks/ and text/"
        raise SystemExit(
            f"--family smollm2: no built SmolLM2 family at {root} (missing {what}). Build it with "
            f"`python {SMOLLM2_BUILDER}` (it writes base/, prose/, code/, math/ model folders plus "
            f"tasks/ and text/ under $GPTAILOR_CACHE/{SMOLLM2_DIR}), or point GPTAILOR_CACHE at the "
            f"folder that holds a built {SMOLLM2_DIR}/."
        )
    names = register_task_dir(root)
    return {"family": {"base": str(root / "base"),
                       "candidates": [str(root / m) for m in SMOLLM2_MEMBERS[1:]],
                       "names": list(SMOLLM2_MEMBERS)},
            "tasks": names}


def run_config(base: dict, args: argparse.Namespace, *, remove_fraction: float = 0.25,
               search: dict | None = None, out_dir: str | None = None):
    """A validated RunConfig from the family part, the flags and the per-row settings."""
    from gptailor_merge.core.config import RunConfig

    data = {
        **base,
        "target": {"remove_fraction": remove_fraction},
        "search": {"n_trials": args.trials, "max_examples": args.max_examples, "seed": args.seed,
                   "calibration_texts": args.calibration_texts,
                   "validation_examples": args.validation_examples, **(search or {})},
        "eval": {"batch_size": args.batch_size, "max_length": args.max_length,
                 "device": args.device, "dtype": args.dtype,
                 "heldout_examples": args.heldout_examples},
        "out_dir": out_dir,
    }
    return RunConfig.from_dict(data, source="benchmarks/quality.py")


# ---- scores <-> rows --------------------------------------------------------------------------
def _compact(per_example: dict) -> dict:
    return {k: [round(v, 6) if k == "nll_sum" else int(v) for v in values]
            for k, values in per_example.items()}


def score_json(score) -> tuple[dict, dict]:
    """(metrics by task, per-example values by task) of a Score, for a row."""
    metrics = {k: {m: round(v, 6) for m, v in ts.metrics.items()} for k, ts in score.tasks.items()}
    return metrics, {k: _compact(ts.per_example) for k, ts in score.tasks.items()}


def score_of(metrics: dict, per_example: dict, n: int | None):
    """The Score a row holds (metrics and per-example values), for intervals and --resume."""
    from gptailor_merge.scoring import Score, TaskScore

    return Score("heldout", n, {k: TaskScore(k, dict(m), {p: tuple(map(float, v)) for p, v in
                                                          per_example.get(k, {}).items()})
                                for k, m in metrics.items()})


class Bench:
    """The benchmark's state: the family, both task sets, the dense base's scores, the rows."""

    def __init__(self, family, tasks, transfer, metric: str, n: int | None, total: int) -> None:
        self.family, self.tasks, self.transfer, self.metric, self.n = family, tasks, transfer, metric, n
        self.total = total
        self.base = None  # (held-out Score, transfer Score) of the dense base
        self.counted: list[str] = []
        self.rows: list[dict] = []
        self.previous: dict[tuple[str, float], dict] = {}
        self.git = env.git_sha()
        self.on_row = None  # called after every row: main writes the JSON, so a kill loses no finished row
        self.only: set[str] | None = None  # --rows: the rows this process scores (member-base always)
        self.removals: dict[tuple[str, float], tuple[list[int], float]] = {}  # baselines: (removed, seconds)

    def wanted(self, method: str) -> bool:
        """Whether this process scores row `method` (`--rows`); the dense base is every shard's yardstick."""
        return self.only is None or method in self.only or method == "member-base"

    def unfinished_rows(self) -> list[dict]:
        """The rows so far, then the earlier run's rows not reached yet (kept until reused)."""
        done = {(r["method"], r["remove_fraction"]) for r in self.rows}
        return [*self.rows, *(r for k, r in self.previous.items() if k not in done)]

    def reuse(self, method: str, fraction: float) -> dict | None:
        row = self.previous.get((method, fraction))
        if row is not None:
            self.rows.append(row)
            self._progress(row)
        return row

    def add(self, method: str, fraction: float, kept: Sequence[int], score, transfer, *,
            seconds: float | None, heldout_seconds: float, **extra) -> dict:
        from gptailor_merge.run.heldout import yardstick_row
        from gptailor_merge.scoring import symmetric_retention

        base, base_transfer = self.base or (score, transfer)
        metrics, per_example = score_json(score)
        t_metrics, t_per_example = score_json(transfer)
        t_ret = symmetric_retention(transfer, base_transfer, self.transfer, metric=self.metric)
        row = {
            "method": method, "remove_fraction": fraction, "layers": len(kept),
            "params": self.family.params_with_layers(kept),
            "tasks": metrics,
            **yardstick_row(score, base, self.tasks, self.counted or None, self.metric),
            "transfer": {"tasks": t_metrics, "retention_sym": round(t_ret.retention_sym, 6),
                         "log_ratios": {k: round(v, 6) for k, v in t_ret.log_ratios.items()}},
            "seconds": None if seconds is None else round(seconds, 2),
            "heldout_seconds": round(heldout_seconds, 2),
            "git_sha": self.git,
            **extra,
            "per_example": per_example, "transfer_per_example": t_per_example,
        }
        self.rows.append(row)
        self._progress(row)
        return row

    def failed(self, method: str, fraction: float, n_keep: int, error: str, seconds: float) -> dict:
        row = {"method": method, "remove_fraction": fraction, "layers": n_keep, "params": None,
               "tasks": {}, "retention_sym": None, "retention_sym_text": None, "worst_task": None,
               "transfer": None, "seconds": round(seconds, 2), "heldout_seconds": 0.0,
               "git_sha": self.git, "error": error}
        self.rows.append(row)
        self._progress(row)
        return row

    def scores(self, row: dict):
        return (score_of(row["tasks"], row["per_example"], self.n),
                score_of(row["transfer"]["tasks"], row["transfer_per_example"], None))

    def _progress(self, row: dict) -> None:
        where = f"remove {row['remove_fraction']:g}" if row["remove_fraction"] else "dense"
        if row.get("error"):
            what = f"FAILED: {row['error']}"
        else:
            what = (f"{row['layers']} layers, retention_sym {_f(row['retention_sym'])}, text "
                    f"{_f(row['retention_sym_text'])}, transfer {_f(row['transfer']['retention_sym'])}")
        took = row["seconds"] if row["seconds"] is not None else row["heldout_seconds"]
        print(f"[{len(self.rows):>2}/{self.total}] {row['method']:<24} {where:<13} {what} "
              f"({took:.1f}s)", flush=True)
        if self.on_row is not None:
            self.on_row()


def _f(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


# ---- scoring a model -------------------------------------------------------------------------
def score_stitched(bench: Bench, evaluator, transfer_ev, genome):
    t0 = time.perf_counter()
    score = evaluator.score(genome, "heldout", bench.n)
    transfer = transfer_ev.score(genome, "heldout", None)
    return score, transfer, time.perf_counter() - t0


def score_loaded(bench: Bench, evaluator, model, tokenizer):
    from gptailor_merge.scoring import evaluate_model

    t0 = time.perf_counter()
    kw = dict(split="heldout", batch_size=evaluator.batch_size, max_length=evaluator.max_length)
    score = evaluate_model(model, tokenizer, bench.tasks, n_examples=bench.n, **kw)
    transfer = evaluate_model(model, tokenizer, bench.transfer, **kw)
    return score, transfer, time.perf_counter() - t0


# ---- rows --------------------------------------------------------------------------------------
def member_rows(bench: Bench, evaluator, names: Sequence[str]) -> None:
    from gptailor_merge.scoring import counted_tasks, load_model_folder

    fam = bench.family
    full = list(range(fam.n_layers))
    for name, member in zip(names, [fam.base, *fam.candidates], strict=True):
        method = f"member-{name}"
        if not bench.wanted(method):
            continue
        row = bench.reuse(method, 0.0)
        if row is None:
            model, tokenizer = load_model_folder(member.path, device=evaluator.stitcher.device,
                                                 dtype=evaluator.stitcher.dtype)
            score, transfer, seconds = score_loaded(bench, evaluator, model, tokenizer)
            del model
            if bench.base is None:
                bench.base = (score, transfer)
                bench.counted = counted_tasks(score, bench.tasks, metric=bench.metric)
            row = bench.add(method, 0.0, full, score, transfer, seconds=None, heldout_seconds=seconds,
                            model_path=member.path.name)
        elif bench.base is None:
            bench.base = bench.scores(row)
            bench.counted = row["counted_tasks"]


def baseline_rows(bench: Bench, calib, evaluator, transfer_ev, tokenizer, fraction: float,
                  n_remove: int, args: argparse.Namespace) -> dict:
    """The baselines of one fraction; returns their genomes (by method) for repair and ablations."""
    from gptailor_merge.baselines import canonical_name, collapsed_model, run_baseline
    from gptailor_merge.core.errors import GptailorError
    from gptailor_merge.core.genome import Genome

    genomes = {}
    options = {"laco": {"threshold": args.laco_threshold}}
    for method in BASELINE_METHODS:
        row = bench.reuse(method, fraction) if bench.wanted(method) else None
        if row is not None:
            if row.get("removed") is not None and not row.get("collapsed_layers"):
                genomes[method] = Genome.base_only(bench.family.n_layers, bench.family.n_candidates,
                                                   row["removed"])
                bench.removals[(method, fraction)] = (list(row["removed"]), row["seconds"] or 0.0)
            continue
        if not bench.wanted(method) and method == "laco":  # neither a seed nor repaired: nothing needs it
            continue
        t0 = time.perf_counter()
        try:
            result = run_baseline(canonical_name(method), calib, n_remove, **options.get(method, {}))
        except GptailorError as exc:  # LaCo above its threshold: the table says so
            if bench.wanted(method):
                bench.failed(method, fraction, bench.family.n_layers - n_remove,
                             f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
            continue
        seconds = time.perf_counter() - t0
        if not result.collapsed:  # a removal set: a search seed, a repair's genome, the uniform merge's start
            genomes[method] = result.genome
            bench.removals[(method, fraction)] = (list(result.removed), seconds)
        if not bench.wanted(method):  # another shard scores it
            continue
        if result.collapsed:  # LaCo's collapsed layers exist only in this model: score it directly
            model = collapsed_model(calib, result)
            score, transfer, heldout_seconds = score_loaded(bench, evaluator, model, tokenizer)
            calib.stitcher.build(calib.full_genome())  # the stitcher's model back to plain layers
        else:
            score, transfer, heldout_seconds = score_stitched(bench, evaluator, transfer_ev,
                                                              result.genome)
        bench.add(method, fraction, result.genome.kept, score, transfer, seconds=seconds,
                  heldout_seconds=heldout_seconds, removed=result.removed,
                  collapsed_layers=sorted(result.collapsed) if result.collapsed else None,
                  details=result.details if method == "laco" else None)
    return genomes


def best_baseline(bench: Bench, fraction: float) -> dict | None:
    rows = [r for r in bench.rows if r["method"] in BASELINE_METHODS
            and r["remove_fraction"] == fraction and r.get("retention_sym") is not None]
    return max(rows, key=lambda r: r["retention_sym"]) if rows else None


def search_best(evaluator, genomes, top: int) -> tuple[object, float, list]:
    """The genome of `genomes` with the best search-split retention at the top rung, with all."""
    scored = [(g, evaluator.rung_result(g, "search", top).retention) for g in genomes]
    best = max(scored, key=lambda item: item[1])
    return best[0], best[1], scored


def uniform_merge_row(bench: Bench, evaluator, transfer_ev, space, config, baseline_genomes,
                      fraction: float) -> None:
    """The best baseline (on the search split) with every kept layer a task-arithmetic merge of
    all fine-tunes, lambda the best of the seed scales on the search split: no search."""
    from gptailor_merge.core.genome import Genome

    if (not bench.wanted("uniform-merge") or bench.reuse("uniform-merge", fraction) is not None
            or bench.family.n_candidates < 2):
        return
    t0 = time.perf_counter()
    top = max(config.search.rungs())
    removal_genome, _, _ = search_best(evaluator, list(baseline_genomes.values()), top)
    lo, hi = space.lambda_range
    every = tuple(range(bench.family.n_candidates))
    candidates = [Genome.from_choices(space.n_layers, space.n_candidates, removal_genome.removed,
                                      [every] * space.n_layers, lams=[lam] * space.n_layers)
                  for lam in sorted({lo, round((lo + hi) / 2, 4), hi})]
    genome, ret, scored = search_best(evaluator, candidates, top)
    seconds = time.perf_counter() - t0
    score, transfer, heldout_seconds = score_stitched(bench, evaluator, transfer_ev, genome)
    bench.add("uniform-merge", fraction, genome.kept, score, transfer, seconds=seconds,
              heldout_seconds=heldout_seconds, removed=list(genome.removed),
              layer_map=genome.describe(), search_split_retention=round(ret, 6),
              lambda_scan={f"{g.layers[0].lam:g}": round(r, 6) for g, r in scored})


def baseline_seeds(bench: Bench, fraction: float):
    """The baselines' removal sets (`baseline_rows`: the same calibration texts as the searches'
    seeds), handed to the seeds-only row and every search: greedy-ppl runs once per fraction."""
    from gptailor_merge.baselines.core import DEFAULT_SEED_METHODS
    from gptailor_merge.run.optimize import SeedRemovals

    found = {m: bench.removals.get((m, fraction)) for m in DEFAULT_SEED_METHODS}
    if any(v is None for v in found.values()):
        return None
    return SeedRemovals({m: v[0] for m, v in found.items()}, sum(v[1] for v in found.values()))


def seeds_only_row(bench: Bench, evaluator, transfer_ev, space, config, fraction: float,
                   n_remove: int, calib_stitcher, tokenizer, given) -> None:
    """The seeds the full search starts from (the same list), each scored at full fidelity on
    the search split; the best, with no optimizer trial."""
    from gptailor_merge.run.optimize import baseline_seed_removals
    from gptailor_merge.search.search import prioritized_seeds

    if not bench.wanted("gptailor-seeds-only") or bench.reuse("gptailor-seeds-only", fraction) is not None:
        return
    s = config.search
    extra, calibration_seconds = ((given.checked(), given.seconds) if given is not None else
                                  baseline_seed_removals(calib_stitcher, tokenizer, bench.tasks,
                                                         n_remove, config.eval, s.calibration_texts))
    t0 = time.perf_counter()
    seeds = prioritized_seeds(space, list(extra.values()), max(1, int(s.seed_fraction * s.n_trials)))
    genome, ret, _ = search_best(evaluator, seeds, max(s.rungs()))
    seconds = calibration_seconds + time.perf_counter() - t0  # what the seeds cost the search
    score, transfer, heldout_seconds = score_stitched(bench, evaluator, transfer_ev, genome)
    bench.add("gptailor-seeds-only", fraction, genome.kept, score, transfer, seconds=seconds,
              heldout_seconds=heldout_seconds, trials=len(seeds), optimizer_trials=0,
              removed=list(genome.removed), layer_map=genome.describe(),
              search_split_retention=round(ret, 6), winner_from_seed=True)


def mergekit_check(run_dir: Path, evaluator, score) -> float:
    """The best recipe through stock mergekit, scored on the same held-out examples: max |diff|
    of the task metrics against the stitched model's (`run.heldout.mergekit_heldout_diff`)."""
    from gptailor_merge.run.heldout import mergekit_heldout_diff

    _, diff = mergekit_heldout_diff(run_dir, evaluator, score, evaluator.stitcher.device.type)
    return round(diff, 9)


def thin(items: Sequence, max_points: int) -> list:
    """At most `max_points` of `items`, evenly spaced, the first and the last kept (0: all)."""
    if max_points <= 0 or len(items) <= max_points:
        return list(items)
    if max_points == 1:
        return [items[-1]]
    step = (len(items) - 1) / (max_points - 1)
    return [items[round(i * step)] for i in range(max_points)]


def anytime(bench: Bench, evaluator, run_dir: Path, baselines: Sequence[dict],
            max_points: int = 0, scored: dict | None = None, winner=None) -> dict:
    """Held-out retention_sym of the best-so-far recipe against trials and the trials' own time;
    with `max_points`, only that many of the best-so-far changes are scored on held-out data
    (each costs a full held-out evaluation; `scored`, genome id -> held-out Score, are not scored
    again). `winner`, the genome the run returned (chosen on validation), ends the curve."""
    from gptailor_merge.core.genome import Genome
    from gptailor_merge.scoring import symmetric_retention
    from gptailor_merge.search.journal import Journal, best_so_far

    trials = Journal(run_dir / "journal.jsonl").load()
    top = max(t.fidelity for t in trials)
    elapsed, at, scores = 0.0, {}, dict(scored or {})
    for t in trials:  # the trials' own time up to each one
        elapsed += t.seconds
        at[t.index] = elapsed
    changes = [(t, at[t.index]) for t in best_so_far(trials, top)]
    entries = [(t, at, Genome.from_dict(t.genome)) for t, at in changes]
    tail = []  # the validation pick, where it is not the search's last best (maybe a seed no rung promoted)
    if winner is not None and (not entries or entries[-1][2].genome_id != winner.genome_id):
        tail = [(next((t for t in trials if t.genome_id == winner.genome_id), None), elapsed, winner)]
    if max_points > 0 and tail:
        entries = (thin(entries, max_points - 1) if max_points > 1 else []) + tail
    else:
        entries = thin(entries, max_points) + tail
    points = []
    for t, at, genome in entries:
        if genome.genome_id not in scores:
            scores[genome.genome_id] = evaluator.score(genome, "heldout", bench.n)
        retention = symmetric_retention(scores[genome.genome_id], bench.base[0], bench.tasks,
                                        metric=bench.metric, counted=bench.counted).retention_sym
        point = {"trial": t.index if t else None, "seconds": round(at, 2),
                 "origin": t.origin if t else "seed",
                 "search_retention": round(t.retention, 6) if t else None,
                 "retention_sym": round(retention, 6)}
        if winner is not None and genome.genome_id == winner.genome_id:
            point["chosen_on"] = "validation"
        points.append(point)
    data = {"points": points, "best_so_far_changes": len(changes),
            "trials": len(trials), "trial_seconds": round(elapsed, 2),
            "baselines": [{"method": r["method"], "seconds": r["seconds"],
                           "retention_sym": r["retention_sym"]} for r in baselines
                          if r.get("retention_sym") is not None]}
    from gptailor_merge.core.atomic import write_json_atomic

    write_json_atomic(run_dir / "anytime.json", data)
    return data


def search_fields(summary: dict, genome, out: Path) -> dict:
    """A search row's record of what `optimize` returned (`summary`: its summary.json) and why."""
    s, chosen = summary["search"], summary["selection"]
    return {"trials": s["trials"], "optimizer_trials": s["optimizer_trials"],
            "winner_trial": chosen["winner"]["trial"], "winner_origin": chosen["winner"]["origin"],
            "winner_from_seed": chosen["winner"]["origin"] == "seed",
            "selection": {k: chosen.get(k) for k in ("source", "message", "best_finalist_vs_best_seed",
                                                     "best_finalist_vs_best_seed_objective")},
            "removed": list(genome.removed), "layer_map": genome.describe(), "genome": genome.to_dict(),
            "recipe": str(out / "best.yaml")}


def search_seconds(search: dict) -> float:
    """A search's own cost: its trials' time (as first run, not a resumed replay) plus the baseline
    seeds' calibration as first measured (computed once per process and family)."""
    return search["trial_seconds"] + search.get("seed_calibration_seconds", 0.0)


def gptailor_rows(bench: Bench, evaluator, transfer_ev, family_part: dict, fraction: float,
                  runs_dir: Path, args: argparse.Namespace, baselines: Sequence[dict], seeds=None) -> dict:
    """The searches of one fraction; returns the full search's best genome (for repair)."""
    from gptailor_merge.core.genome import Genome
    from gptailor_merge.run.optimize import optimize

    best_genome = None
    for method, settings in SEARCH_ROWS:
        ablation_skipped = method != "gptailor" and (args.skip_ablations or args.skip_search_ablations)
        if ablation_skipped or not bench.wanted(method):
            continue
        row = bench.reuse(method, fraction)
        if row is not None:
            if method == "gptailor":
                best_genome = Genome.from_dict(row["genome"])
            continue
        out = runs_dir / f"remove{fraction:g}-{method}"
        config = run_config(family_part, args, remove_fraction=fraction, search=settings,
                            out_dir=str(out))
        # a run folder (config.yaml) resumes, even one killed before its first trial was journaled
        resume = out if (out / "config.yaml").is_file() else None
        outcome = optimize(config, progress=False, resume=resume, heldout=False, seed_removals=seeds)
        s = outcome.summary["search"]
        genome = Genome.from_dict(outcome.summary["best_genome"])
        score, transfer, heldout_seconds = score_stitched(bench, evaluator, transfer_ev, genome)
        extra = {
            **search_fields(outcome.summary, genome, out), "origins": s["origins"],
            "search_best_trial": s["best_trial"],
            "search_trial_seconds": s["trial_seconds"], "resumed": resume is not None,
            "search": {k: s[k] for k in ("optimizer", "rungs", "evaluated", "full_fidelity_evaluations",
                                         "best_search_retention", "search_seconds")},
            "settings": settings, "mergekit_vs_stitch_max_abs_diff": mergekit_check(out, evaluator, score),
        }
        seconds = search_seconds(s)
        row = bench.add(method, fraction, genome.kept, score, transfer, seconds=seconds,
                        heldout_seconds=heldout_seconds, **extra)
        if method == "gptailor":
            best_genome = genome
            # the winner is the curve's last point: its held-out score is the row's own
            row["anytime"] = anytime(bench, evaluator, out, baselines, args.anytime_points,
                                     scored={genome.genome_id: score}, winner=genome)
    return {"gptailor": best_genome} if best_genome is not None else {}


def repair_scores(runs_dir: Path | None, fraction: float, name: str, searched: dict):
    """The `+repair` row's validation scores, kept in its own file (a resumed shard does not pay
    again), over `searched`: the scores of the full search's validation pick, which scored the same
    genomes and the same reference (one key scheme: `search.score_cache.score_key`)."""
    from gptailor_merge.search.score_cache import VALIDATION_SCORES, ScoreCache

    if runs_dir is None:
        return ScoreCache(None)
    cache = ScoreCache(runs_dir / f"remove{fraction:g}-{name}-{VALIDATION_SCORES}")
    cache.scores = {**searched, **cache.scores}
    return cache


def searched_scores(runs_dir: Path | None, fraction: float) -> dict:
    """The full search's validation scores at `fraction` (read once for every `+repair` row)."""
    from gptailor_merge.search.score_cache import VALIDATION_SCORES, ScoreCache

    path = runs_dir / f"remove{fraction:g}-gptailor" / VALIDATION_SCORES if runs_dir is not None else None
    return ScoreCache(path).scores if path is not None and path.is_file() else {}


def repair_rows(bench: Bench, evaluator, config, tokenizer, fraction: float, genomes: dict,
                args: argparse.Namespace, runs_dir: Path | None = None) -> None:
    """`<method>+repair`: the same genome with the run's repair of its cuts (`run.repair_run`:
    its calibration sources and objective, `--repair-texts` search examples per task), scored like
    every other row, with the validation choice the tool makes for it (kept or not, and why), on
    `--validation-examples` per task as the search's pick."""
    from gptailor_merge.core.genome import Genome
    from gptailor_merge.run.repair_run import FinalistRepair
    from gptailor_merge.search.score_cache import score_key
    from gptailor_merge.search.selection import evaluator_repair_decision

    n_val = args.validation_examples
    repairer = FinalistRepair(evaluator, config, n_examples_per_task=args.repair_texts)
    searched = searched_scores(runs_dir, fraction)
    for method, genome in genomes.items():
        name = f"{method}+repair"
        if not bench.wanted(name) or bench.reuse(name, fraction) is not None:
            continue
        cache = repair_scores(runs_dir, fraction, name, searched)
        reference = cache.get(score_key("reference", "validation", n_val),
                              lambda: evaluator.reference("validation", n_val))
        t0 = time.perf_counter()
        repaired_val, record = repairer(genome, n_val)  # fits (timed in record) and scores validation
        unrepaired_val = cache.get(score_key(genome.genome_id, "validation", n_val),
                                   lambda g=genome: evaluator.score(g, "validation", n_val))
        kept, choice = evaluator_repair_decision(evaluator, repaired_val, unrepaired_val, reference, record)
        model, info = repairer.repaired_model(genome)  # the fitted maps, fused again
        seconds = record["fit_seconds"]
        score, transfer, heldout_seconds = score_loaded(bench, evaluator, model, tokenizer)
        evaluator.stitcher.build(Genome.base_only(genome.n_layers, genome.n_candidates))  # plain layers back
        bench.add(name, fraction, genome.kept, score, transfer, seconds=seconds,
                  heldout_seconds=heldout_seconds, removed=list(genome.removed),
                  repair={**info.to_json(), "settings": repairer.settings.model_dump(mode="json"),
                          "validation_choice": {**choice, "validation_examples": n_val}},
                  repair_kept=kept)
        logging.getLogger(__name__).info("%s: %s (%.0f s)", name, choice["message"], time.perf_counter() - t0)


REPAIR_PICK = "gptailor-repair-pick"


def repair_pick_row(bench: Bench, evaluator, transfer_ev, tokenizer, family_part: dict, fraction: float,
                    runs_dir: Path, args: argparse.Namespace, seeds=None) -> None:
    """`gptailor-repair-pick`: the full search's run folder, copied and resumed with `repair="linear"`
    (its trials replay from the journal, its unrepaired validation scores from the cache), so the row
    is what `optimize --repair linear` returns: the repaired folder where its winner kept the repair,
    the recipe's model otherwise. Seconds: the search's plus every contender's fit."""
    from gptailor_merge.core.genome import Genome
    from gptailor_merge.run.optimize import optimize
    from gptailor_merge.run.repair_run import REPAIRED_DIR
    from gptailor_merge.run.run_folder import LOCK_FILE
    from gptailor_merge.scoring import load_model_folder

    if not bench.wanted(REPAIR_PICK) or bench.reuse(REPAIR_PICK, fraction) is not None:
        return
    out, searched = runs_dir / f"remove{fraction:g}-{REPAIR_PICK}", runs_dir / f"remove{fraction:g}-gptailor"
    if not (out / "config.yaml").is_file() and (searched / "config.yaml").is_file():
        shutil.copytree(searched, out, ignore=shutil.ignore_patterns(LOCK_FILE, "best_model*", "pareto"),
                        dirs_exist_ok=True)
    config = run_config(family_part, args, remove_fraction=fraction, out_dir=str(out))
    resume = out if (out / "config.yaml").is_file() else None
    outcome = optimize(config, progress=False, resume=resume, heldout=False, seed_removals=seeds,
                       repair="linear", repair_options={"n_examples_per_task": args.repair_texts})
    chosen, repair = outcome.summary["selection"], outcome.summary["repair"]
    genome = Genome.from_dict(outcome.summary["best_genome"])
    if repair["kept"]:
        model, _ = load_model_folder(out / REPAIRED_DIR, device=evaluator.stitcher.device)
        score, transfer, heldout_seconds = score_loaded(bench, evaluator, model, tokenizer)
    else:
        score, transfer, heldout_seconds = score_stitched(bench, evaluator, transfer_ev, genome)
    fits = {c["name"]: c["repair"].get("fit_seconds") for c in chosen["contenders"] if c.get("repair")}
    fit_seconds = sum(v for v in fits.values() if v is not None)
    bench.add(REPAIR_PICK, fraction, genome.kept, score, transfer,
              seconds=search_seconds(outcome.summary["search"]) + fit_seconds, heldout_seconds=heldout_seconds,
              **search_fields(outcome.summary, genome, out),
              contenders=chosen["contenders"], fit_seconds_per_contender=fits, repair_kept=bool(repair["kept"]),
              repair={"kept": bool(repair["kept"]), "message": repair.get("message"),
                      "settings": repair.get("settings")})
    logging.getLogger(__name__).info("%s: %s; repair: %s", REPAIR_PICK, chosen["message"], repair.get("message"))


# ---- comparisons ---------------------------------------------------------------------------------
def comparisons(bench: Bench) -> None:
    """Paired bootstrap intervals, added to the rows: every pruned row against the best baseline
    of its fraction; search rows against the seeds-only row; repaired rows against unrepaired."""
    from gptailor_merge.scoring.intervals import paired_bootstrap

    base, base_transfer = bench.base
    by_key = {(r["method"], r["remove_fraction"]): r for r in bench.rows}
    transfer_names = [t.name for t in bench.transfer]

    def diff(a: dict, b: dict, seed: int) -> tuple[dict, dict]:
        (sa, ta), (sb, tb) = bench.scores(a), bench.scores(b)
        return (paired_bootstrap(sa, sb, base, bench.tasks, bench.counted, metric=bench.metric,
                                 n_boot=N_BOOT, seed=seed),
                paired_bootstrap(ta, tb, base_transfer, bench.transfer, transfer_names,
                                 n_boot=N_BOOT, seed=seed))

    for i, row in enumerate(bench.rows):
        fraction = row["remove_fraction"]
        if not fraction or row.get("retention_sym") is None or "per_example" not in row:
            continue
        best = best_baseline(bench, fraction)
        if best is not None and best is not row:
            row["vs_best_baseline"], row["transfer_vs_best_baseline"] = diff(row, best, i)
            row["vs_best_baseline"]["baseline"] = best["method"]
        seeds = by_key.get(("gptailor-seeds-only", fraction))
        searched = row["method"].startswith("gptailor") and not row["method"].endswith("+repair")
        if searched and seeds is not None and seeds is not row:
            row["vs_seeds_only"], row["transfer_vs_seeds_only"] = diff(row, seeds, i)
        if row["method"].endswith("+repair") or row["method"] == REPAIR_PICK:
            unrepaired = "gptailor" if row["method"] == REPAIR_PICK else row["method"].removesuffix("+repair")
            plain = by_key.get((unrepaired, fraction))
            if plain is not None:
                row["vs_unrepaired"], row["transfer_vs_unrepaired"] = diff(row, plain, i)


# ---- report -----------------------------------------------------------------------------------
def table(rows: Sequence[dict], tasks, transfer) -> str:
    from gptailor_merge.scoring.intervals import interval_text

    def cell(metrics: dict) -> str:
        if not metrics:
            return "-"
        return f"{metrics['acc']:.3f}" if "acc" in metrics else f"{metrics['ppl']:.2f}"

    head = ["method", "remove", "layers", *(t.name for t in tasks), *(t.name for t in transfer),
            "retention_sym", "text", "worst task", "transfer", "vs best baseline", "vs seeds-only",
            "transfer vs best baseline", "trials (opt.)", "winner", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t_tasks = (r.get("transfer") or {}).get("tasks", {})
        worst = r.get("worst_task")
        trials = "-" if r.get("trials") is None else f"{r['trials']} ({r.get('optimizer_trials', 0)})"
        winner = "-"
        if r.get("winner_origin"):
            winner = f"#{r['winner_trial']} {r['winner_origin']}"
            if (r.get("selection") or {}).get("source") == "seed":
                winner += " (seed returned)"
        method = r["method"]
        if "repair_kept" in r:
            method += " (kept on validation)" if r["repair_kept"] else " (not kept: validation)"
        lines.append("| " + " | ".join([
            method, f"{r['remove_fraction']:g}", str(r["layers"]),
            *(cell(r["tasks"].get(t.name, {})) for t in tasks),
            *(cell(t_tasks.get(t.name, {})) for t in transfer),
            _f(r.get("retention_sym")), _f(r.get("retention_sym_text")),
            f"{worst['task']} {worst['ratio']:.3f}" if worst else "-",
            _f((r.get("transfer") or {}).get("retention_sym")),
            interval_text(r.get("vs_best_baseline")), interval_text(r.get("vs_seeds_only")),
            interval_text(r.get("transfer_vs_best_baseline")), trials, winner,
            _f(r.get("seconds"), ".1f")]) + " |")
    return "\n".join(lines)


def stored_tasks(result: dict) -> tuple[list, list]:
    """(tasks, transfer tasks) of a result as name / kind / chance records, in the order the run
    scored them (a JSON file's keys are sorted), so a bootstrap over them draws as the run did."""
    from types import SimpleNamespace

    from gptailor_merge.bench.transfer import TRANSFER_TASKS

    tasks = [SimpleNamespace(name=t["name"], kind=t["kind"], chance=t["chance"]) for t in result["tasks"]]
    names = _base_row(result)["transfer"]["tasks"]
    ordered = [n for n in TRANSFER_TASKS if n in names] + sorted(set(names) - set(TRANSFER_TASKS))
    return tasks, [SimpleNamespace(name=n, kind="perplexity", chance=0.0) for n in ordered]


def _base_row(result: dict) -> dict:
    return next(r for r in result["rows"] if r["method"] == "member-base")


def footnote(result: dict) -> str:
    """The table's footnote, from the result alone (a merged result writes the same one)."""
    per_example = _base_row(result)["transfer_per_example"]
    used = ", ".join(f"{t['name']} n={t['heldout_used']}"
                     + ("" if t["name"] in result["counted_tasks"] else " (not counted: base at chance)")
                     for t in result["tasks"])
    t_used = ", ".join(f"{t.name} n={len(next(iter(per_example[t.name].values())))}"
                       for t in stored_tasks(result)[1])
    n_val = result.get("args", {}).get("validation_examples")
    validation = "every validation example" if n_val is None else f"the first {n_val} validation examples of each task"
    return "\n".join([
        f"Held-out examples, the same for every row: {used}. Transfer texts (never seen by any "
        f"member's training or any search): {t_used}. Task columns: accuracy (multiple choice) or "
        f"perplexity (`ppl_*`, `transfer_*`).",
        "retention_sym: exp(mean log ratio) against the dense base over the counted tasks "
        "(perplexity: log(ppl_base / ppl); multiple choice: log((acc - chance) / (acc_base - "
        "chance)), floored); text: the same over the perplexity tasks; transfer: over the transfer "
        "texts. Intervals: difference in mean log ratio, paired bootstrap 95% over held-out "
        f"examples ({N_BOOT} resamples); > 0 means the row is better. Trials (opt.): all trials "
        "(those not seeds); winner: the returned trial and where it came from, chosen on the "
        "validation split against the baseline seeds ('seed returned': no searched genome beat "
        "the best seed there with a paired interval above zero). Seconds: the "
        "method's own compute (baselines: calibration + selection; searches: the trials' own time "
        "as first run plus the calibration of their baseline seeds as first measured; seeds-only: "
        "that calibration plus scoring the seeds; +repair rows: the fit). A +repair row says whether the "
        "tool keeps that repair: only where the repaired model beats its unrepaired one on "
        f"{validation} with a paired interval above zero (the search's pick reads the same). "
        f"{REPAIR_PICK}: what `optimize --repair linear` returns, the full search's journal with every "
        "validation contender repaired and the pick made among their kept forms (seconds: the search's "
        "plus every contender's fit).",
    ])


# ---- main -------------------------------------------------------------------------------------
SAME_SETTINGS = ("family", "trials", "max_examples", "heldout_examples", "seed", "laco_threshold",
                 "batch_size", "max_length", "calibration_texts", "demo_preset", "dtype",
                 "skip_ablations", "repair_texts", "validation_examples")


# ---- shards -------------------------------------------------------------------------------------
REPAIR_ROWS = tuple(f"{m}+repair" for m in (*REPAIRED_BASELINES, "gptailor"))
PRUNED_ROWS = (*BASELINE_METHODS, "uniform-merge", "gptailor-seeds-only", *(m for m, _ in SEARCH_ROWS), *REPAIR_ROWS,
               REPAIR_PICK)
"""The pruned rows of one fraction, in the order an unsharded run writes them."""


def check_rows(rows: Sequence[str], members: Sequence[str]) -> set[str]:
    """`--rows`: known names, and each +repair row with its unrepaired row (it repairs that genome)."""
    known = [f"member-{m}" for m in members] + list(PRUNED_ROWS)
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise SystemExit(f"--rows {' '.join(unknown)}: unknown rows; known: {', '.join(known)}")
    alone = [r for r in rows if r.endswith("+repair") and r.removesuffix("+repair") not in rows]
    if alone:
        raise SystemExit(f"--rows {' '.join(alone)}: a +repair row repairs its unrepaired row's genome; "
                         f"give {' '.join(r.removesuffix('+repair') for r in alone)} in the same shard")
    return set(rows)


def merge_results(paths: Sequence[Path], out: Path) -> dict:
    """`--merge`: the shards' rows as one result, in an unsharded run's order, with its intervals
    recomputed from the stored per-example values. Refuses shards of other code versions, other
    settings, unfinished shards, and a row scored in two of them (the dense base excepted, which
    every shard scores and which must agree)."""
    shards = [json.loads(Path(p).read_text()) for p in paths]
    first = shards[0]
    for path, shard in zip(paths, shards, strict=True):
        if shard.get("benchmark") != "quality":
            raise SystemExit(f"--merge: {path} is not a quality.py result")
        if not shard.get("complete"):
            raise SystemExit(f"--merge: {path} is unfinished; finish it with its command and --resume first")
        versions = {shard["git"]["sha"], *((r.get("git_sha") or {}).get("sha") for r in shard["rows"])}
        if shard["git"] != first["git"] or versions != {first["git"]["sha"]}:
            raise SystemExit(f"--merge: {path} is of code version {sorted(map(str, versions))}, "
                             f"{paths[0]} of {first['git']['sha']}; a table mixes no versions")
        differ = [k for k in (*SAME_SETTINGS, "remove", "transfer_texts") if shard["args"].get(k) != first["args"].get(k)]
        differ += [k for k in ("tasks", "transfer", "counted_tasks", "family") if shard.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--merge: {path} and {paths[0]} differ in {', '.join(differ)}; shards of one "
                             "table share every setting but --rows")
    by_key: dict[tuple[str, float], tuple[dict, Path]] = {}
    for path, shard in zip(paths, shards, strict=True):
        for row in shard["rows"]:
            key = (row["method"], row["remove_fraction"])
            if key in by_key:
                other, where = by_key[key]
                same = (row["method"] == "member-base" and row["per_example"] == other["per_example"]
                        and row["transfer_per_example"] == other["transfer_per_example"])
                if not same:
                    raise SystemExit(f"--merge: row {row['method']} (remove {row['remove_fraction']:g}) is in "
                                     f"both {where} and {path}; score each row in one shard")
                continue
            by_key[key] = ({k: v for k, v in row.items() if not k.startswith(("vs_", "transfer_vs_"))}, path)
    members = [f"member-{m}" for m in first["family"]["members"]]
    fractions = list(first["args"]["remove"])

    def rank(row: dict) -> tuple[int, int]:
        if not row["remove_fraction"]:
            return 0, members.index(row["method"])
        return 1 + fractions.index(row["remove_fraction"]), PRUNED_ROWS.index(row["method"])

    rows = sorted((r for r, _ in by_key.values()), key=rank)
    tasks, transfer = stored_tasks(first)
    bench = Bench(None, tasks, transfer, first["args"].get("metric", "acc"), first["heldout_examples"], len(rows))
    bench.rows, bench.counted = rows, first["counted_tasks"]
    bench.base = bench.scores(_base_row(first))
    comparisons(bench)
    result = {**first, "rows": rows, "complete": True, "wall_seconds": None,
              "merged_from": [{"json": str(p), "rows": [r["method"] for r in s["rows"]],
                               "wall_seconds": s.get("wall_seconds"), "args_rows": s["args"].get("rows")}
                              for p, s in zip(paths, shards, strict=True)]}
    print(table(rows, tasks, transfer))
    print()
    print(footnote(result))
    env.write_result(out, result)
    print(f"wrote {out} ({len(rows)} rows from {len(paths)} shards)")
    return result


def previous_rows(path: Path, result: dict) -> dict[tuple[str, float], dict]:
    """Finished rows of an earlier run written to `path` with the same settings and code version."""
    old = json.loads(path.read_text())
    differ = [k for k in SAME_SETTINGS if old.get("args", {}).get(k) != result["args"].get(k)]
    if differ:
        raise SystemExit(f"--resume: {path} was written with other settings ({', '.join(differ)}); "
                         "rerun with those or give another --json")
    versions = {(r.get("git_sha") or {}).get("sha") for r in old.get("rows", [])}
    if versions - {result["git"]["sha"]}:
        raise SystemExit(f"--resume: {path} holds rows of another code version ({', '.join(sorted(map(str, versions)))}, "
                         f"this is {result['git']['sha']}); a table mixes no versions. Rerun without "
                         "--resume or give another --json")
    return {(r["method"], r["remove_fraction"]): r for r in old.get("rows", [])}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=("demo", "smollm2"), default="demo")
    p.add_argument("--remove", type=float, nargs="+", default=None, metavar="FRACTION",
                   help="fractions of layers to remove (default: 0.125 0.25 0.375 for demo, "
                        "0.25 for smollm2)")
    p.add_argument("--trials", type=int, default=60, help="trial budget of each GPTailor search")
    p.add_argument("--json", type=Path, default=None,
                   help="output (default benchmarks/results/quality-<family>.json)")
    p.add_argument("--demo-preset", choices=("default", "tiny"), default="default",
                   help="demo family size; tiny is a seconds-long smoke run")
    p.add_argument("--max-examples", type=int, default=90,
                   help="search examples per task at the top rung")
    p.add_argument("--heldout-examples", type=int, default=None,
                   help="held-out examples per task, the same for every row (default: all)")
    p.add_argument("--transfer-texts", type=int, default=64,
                   help="transfer texts per source (gptailor_merge/bench/transfer.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-texts", type=int, default=32,
                   help="search-split texts per perplexity task that calibrate the baselines, the "
                        "search's baseline seeds and the repair (one setting for all)")
    p.add_argument("--laco-threshold", type=float, default=0.65)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    env.add_device_args(p)
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep the GPTailor run folders (journals, recipes, mergekit models) here; "
                        "default: a temporary folder, deleted")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the finished rows of --json (same "
                        "settings and code version) and resume searches from their journals")
    p.add_argument("--skip-ablations", action="store_true",
                   help="only the full search and the baselines (no uniform-merge, seeds-only, "
                        "no-seeds, random, removal-only rows)")
    p.add_argument("--skip-search-ablations", action="store_true",
                   help="no removal-only, no-seeds or random searches (uniform-merge and "
                        "seeds-only stay): for families where one search takes hours")
    p.add_argument("--anytime-points", type=int, default=0,
                   help="score at most this many of the full search's best-so-far changes on "
                        "held-out data for the anytime curve (0: all)")
    p.add_argument("--skip-repair", action="store_true", help="no +repair rows")
    p.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                   help="score only these rows (a shard; member-base, the yardstick, always): e.g. "
                        "--rows gptailor gptailor+repair in one process and the rest in another, then --merge")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="assemble finished shards (the same code version and settings) into --json; "
                        "scores nothing")
    p.add_argument("--validation-examples", type=int, default=None,
                   help="validation examples per task for the search's pick and the +repair rows' "
                        "choice (default: all; keep it above --max-examples, the top rung's sample)")
    p.add_argument("--repair-texts", type=int, default=128,
                   help="search-split texts per text task the +repair rows fit on (a map has "
                        "hidden_size^2 parameters: more text than a baseline's calibration)")
    args = p.parse_args(argv)
    args.remove = args.remove or list(DEMO_FRACTIONS if args.family == "demo" else SMOLLM2_FRACTIONS)
    bad = [f for f in args.remove if not 0.0 < f < 1.0]
    if bad:
        p.error(f"--remove {bad[0]}: a fraction of layers in (0, 1), e.g. 0.25")
    if args.resume and args.runs_dir is None:
        p.error("--resume needs --runs-dir (the GPTailor journals to resume)")
    counts = (args.trials, args.max_examples, args.calibration_texts, args.heldout_examples,
              args.transfer_texts, args.repair_texts, args.validation_examples)
    if min(n for n in counts if n is not None) < 1:  # None: every example
        p.error("--trials, --max-examples, --heldout-examples, --transfer-texts, "
                "--calibration-texts, --repair-texts and --validation-examples must be at least 1")
    if args.merge and args.json is None:
        p.error("--merge needs --json (where the assembled table goes)")
    env.resolve_dtype(args)
    args.json = args.json or Path(f"benchmarks/results/quality-{args.family}.json")
    return args


@dataclass
class Setup:
    """What every row is scored with: the family, both task sets and the scorers (built once)."""

    config: object
    family_part: dict
    family: object
    names: list
    tasks: list
    transfer: list
    transfer_info: dict
    stitcher: object
    tokenizer: object
    evaluator: object
    transfer_ev: object
    calib: object


def setup(args: argparse.Namespace) -> Setup:
    """The family, the held-out and transfer tasks, the evaluators and the baseline calibration."""
    from transformers import AutoTokenizer

    from gptailor_merge.baselines import Calibration, calibration_texts
    from gptailor_merge.bench.transfer import transfer_tasks
    from gptailor_merge.materialize.stitch import Stitcher
    from gptailor_merge.run.resolve import load_tasks, resolve_family
    from gptailor_merge.scoring import text_tasks
    from gptailor_merge.search.evaluator import Evaluator

    family_part = family_config(args)
    config = run_config(family_part, args)
    family, names = resolve_family(config, progress=True)
    tasks = load_tasks(config)
    transfer, transfer_info = transfer_tasks(args.transfer_texts)
    if not text_tasks(tasks):
        raise SystemExit("the baselines calibrate on text (perplexity) tasks; this family has none")
    ev, s = config.eval, config.search
    stitcher = Stitcher(family, device=ev.device, dtype=ev.dtype)
    tokenizer = AutoTokenizer.from_pretrained(family.base.path)
    evaluator = Evaluator(stitcher, tokenizer, tasks, batch_size=ev.batch_size,
                          max_length=ev.max_length, metric=s.metric, rungs=tuple(s.rungs()),
                          chance_z=s.chance_z, mc_objective=s.mc_objective)
    transfer_ev = Evaluator(stitcher, tokenizer, transfer, batch_size=ev.batch_size,
                            max_length=ev.max_length, prefix_cache_bytes=0)
    calib = Calibration(stitcher, tokenizer, tuple(calibration_texts(text_tasks(tasks), args.calibration_texts)),
                        batch_size=ev.batch_size, max_length=ev.max_length)
    return Setup(config, family_part, family, names, tasks, transfer, transfer_info, stitcher, tokenizer,
                 evaluator, transfer_ev, calib)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge_results(args.merge, args.json)
    env.setup_torch(args.threads)
    logging.getLogger("gptailor_merge.scoring.objectives").setLevel(logging.ERROR)
    from gptailor_merge.core.genome import resolve_target
    from gptailor_merge.run.optimize import search_space
    from gptailor_merge.scoring import text_tasks

    started = time.perf_counter()
    ctx = setup(args)
    config, family, names, tasks, transfer = ctx.config, ctx.family, ctx.names, ctx.tasks, ctx.transfer
    n_removes = {}
    for fraction in args.remove:
        n_removes[fraction] = family.n_layers - resolve_target(family.n_layers, remove_fraction=fraction)
        if n_removes[fraction] == 0:
            raise SystemExit(f"--remove {fraction} removes no layer of {family.n_layers}; "
                             "give a larger fraction")
    n = config.eval.heldout_examples
    per_fraction = len(BASELINE_METHODS) + 1 + (
        0 if args.skip_ablations else 2 if args.skip_search_ablations else len(SEARCH_ROWS) + 1)
    per_fraction += 0 if args.skip_repair else len(REPAIRED_BASELINES) + 2
    bench = Bench(family, tasks, transfer, config.search.metric, n, len(names) + len(args.remove) * per_fraction)
    if args.rows:
        bench.only = check_rows(args.rows, names)
        bench.total = len(bench.only | {"member-base"})
    print(f"quality: {args.family} family ({', '.join(names)}), {family.n_layers} layers, removing "
          f"{', '.join(f'{f:g} ({k} layers)' for f, k in n_removes.items())}; held-out examples "
          f"per task: {n or 'all'}", flush=True)

    result = {
        "benchmark": "quality", "git": bench.git, "hardware": env.hardware(), "seed": args.seed,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "family": {"name": args.family, "members": names, "n_layers": family.n_layers,
                   "total_params": family.total_params,
                   **({"demo_preset": args.demo_preset} if args.family == "demo" else {})},
        "heldout_examples": n,
        "tasks": [{"name": t.name, "kind": t.kind, "chance": round(t.chance, 6),
                   "heldout_used": len(t.examples("heldout", n))} for t in tasks],
        "transfer": ctx.transfer_info,
        "calibration": {"split": "search", "tasks": [t.name for t in text_tasks(tasks)],
                        "n_examples_per_task": args.calibration_texts, "n_texts": len(ctx.calib.texts),
                        "used_by": ["baselines", "search baseline seeds"],
                        "repair_examples_per_task": None if args.skip_repair else args.repair_texts},
        "complete": False, "rows": bench.rows,
    }
    if args.resume and args.json.is_file():
        bench.previous = previous_rows(args.json, result)
    bench.on_row = save = lambda: env.write_result(args.json, {**result, "rows": bench.unfinished_rows()})
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="gptailor-quality-"))
    try:
        member_rows(bench, ctx.evaluator, names)
        result["counted_tasks"] = bench.counted
        save()  # counted_tasks is known only once the member rows are
        for fraction, n_remove in n_removes.items():
            genomes = baseline_rows(bench, ctx.calib, ctx.evaluator, ctx.transfer_ev, ctx.tokenizer, fraction,
                                    n_remove, args)
            fraction_config = run_config(ctx.family_part, args, remove_fraction=fraction)
            seeds = baseline_seeds(bench, fraction)
            space = search_space(fraction_config, family, family.n_layers - n_remove)
            if not args.skip_ablations and genomes:
                uniform_merge_row(bench, ctx.evaluator, ctx.transfer_ev, space, fraction_config, genomes,
                                  fraction)
                seeds_only_row(bench, ctx.evaluator, ctx.transfer_ev, space, fraction_config, fraction,
                               n_remove, ctx.stitcher, ctx.tokenizer, seeds)
            baselines = [r for r in bench.rows if r["remove_fraction"] == fraction
                         and r["method"] in BASELINE_METHODS]
            searched = gptailor_rows(bench, ctx.evaluator, ctx.transfer_ev, ctx.family_part, fraction, runs_dir,
                                     args, baselines, seeds)
            save()  # the full search's row gained its anytime curve after it was written
            if not args.skip_repair:
                to_repair = {m: g for m, g in genomes.items() if m in REPAIRED_BASELINES}
                repair_rows(bench, ctx.evaluator, ctx.config, ctx.tokenizer, fraction, {**to_repair, **searched},
                            args, args.runs_dir)
                repair_pick_row(bench, ctx.evaluator, ctx.transfer_ev, ctx.tokenizer, ctx.family_part, fraction,
                                runs_dir, args, seeds)
            comparisons(bench)
            save()
    finally:
        if args.runs_dir is None:
            shutil.rmtree(runs_dir, ignore_errors=True)

    comparisons(bench)
    result["complete"] = True
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(table(bench.rows, tasks, transfer))
    print()
    print(footnote(result))
    env.write_result(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

