"""Quality: held-out scores of GPTailor against the dense family and single-model pruning baselines.

Rows: the dense base, each fine-tune, the baselines (reverse, ShortGPT, angular, greedy perplexity,
LaCo; calibrated on the search split), GPTailor removal-only search and full search (`optimize`),
all scored on the same held-out examples. Prints a markdown table and writes JSON (git SHA,
hardware, seed, one row per model).

    python benchmarks/quality.py --family demo|smollm2 [--remove 0.25 ...] [--trials 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from speed import git_sha, hardware, setup_torch, write_result  # noqa: E402

DEMO_FRACTIONS = (0.125, 0.25, 0.375)
SMOLLM2_FRACTIONS = (0.25,)
BASELINE_METHODS = ("reverse", "shortgpt", "angular", "greedy-ppl", "laco")
SMOLLM2_DIR = "smollm2-family"
SMOLLM2_MEMBERS = ("base", "prose", "code", "math")
SMOLLM2_BUILDER = "benchmarks/smollm2_family.py"


# ---- family and tasks -------------------------------------------------------------------------
def smollm2_root() -> Path:
    from gptailor_merge.demo import default_cache_dir

    return default_cache_dir() / SMOLLM2_DIR


def family_config(args: argparse.Namespace) -> dict:
    """The `family` and `tasks` parts of a RunConfig for `--family` (tasks registered here)."""
    from gptailor_merge.config import DEMO, DEMO_TASKS

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
    from gptailor_merge.config import RunConfig

    data = {
        **base,
        "target": {"remove_fraction": remove_fraction},
        "search": {"n_trials": args.trials, "max_examples": args.max_examples, "seed": args.seed,
                   **(search or {})},
        "eval": {"batch_size": args.batch_size, "max_length": args.max_length,
                 "device": args.device, "dtype": args.dtype,
                 "heldout_examples": args.heldout_examples},
        "out_dir": out_dir,
    }
    return RunConfig.from_dict(data, source="benchmarks/quality.py")


# ---- rows -------------------------------------------------------------------------------------
def _finite(values: dict[str, float]) -> dict[str, float | None]:
    """Per-task values for JSON: undefined ones (reference at zero or at chance) as null."""
    return {k: round(v, 6) if math.isfinite(v) else None for k, v in values.items()}


def _mean(values) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), 6) if finite else None


class Rows:
    """Scores -> rows against one dense reference; prints a progress line per row."""

    def __init__(self, family, tasks, metric: str, total: int) -> None:
        self.family, self.tasks, self.metric, self.total = family, tasks, metric, total
        self.kinds = {t.name: t.kind for t in tasks}
        self.base = None  # the dense base's held-out Score
        self.best_dense = None
        self.rows: list[dict] = []
        self.previous: dict[tuple[str, float], dict] = {}  # --resume: finished rows by (method, fraction)

    def reuse(self, method: str, fraction: float) -> bool:
        """--resume: take the finished row of an earlier run of the same benchmark, if any."""
        row = self.previous.get((method, fraction))
        if row is None:
            return False
        self.rows.append(row)
        self._progress(row)
        return True

    def add(self, method: str, remove_fraction: float, kept: Sequence[int], score, *,
            seconds: float | None, heldout_seconds: float, trials: int | None = None,
            **extra) -> dict:
        from gptailor_merge.scoring import retention, retention_above_chance

        base = self.base or score
        plain = retention(score, base, self.tasks, metric=self.metric)
        above = retention_above_chance(score, base, self.tasks, metric=self.metric)
        row = {
            "method": method,
            "remove_fraction": remove_fraction,
            "layers": len(kept),
            "params": self.family.params_with_layers(kept),
            "tasks": {k: {m: round(v, 6) for m, v in ts.metrics.items()} for k, ts in score.tasks.items()},
            "retention": _mean(plain.values()),
            "retention_above_chance": _mean(above.values()),
            "retention_text": _mean(v for t, v in plain.items() if self.kinds[t] == "perplexity"),
            "retention_per_task": _finite(plain),
            "retention_above_chance_per_task": _finite(above),
            "retention_vs_best_dense": None,
            "trials": trials,
            "seconds": None if seconds is None else round(seconds, 2),
            "heldout_seconds": round(heldout_seconds, 2),
            **extra,
        }
        if self.best_dense is not None:
            row["retention_vs_best_dense"] = _mean(
                retention(score, self.best_dense, self.tasks, metric=self.metric).values())
        self.rows.append(row)
        self._progress(row)
        return row

    def failed(self, method: str, remove_fraction: float, n_keep: int, error: str,
               seconds: float) -> dict:
        row = {"method": method, "remove_fraction": remove_fraction, "layers": n_keep,
               "params": None, "tasks": {}, "retention": None, "retention_above_chance": None,
               "retention_text": None,
               "retention_per_task": {}, "retention_above_chance_per_task": {},
               "retention_vs_best_dense": None, "trials": None, "seconds": round(seconds, 2),
               "heldout_seconds": 0.0, "error": error}
        self.rows.append(row)
        self._progress(row)
        return row

    def _progress(self, row: dict) -> None:
        where = f"remove {row['remove_fraction']:g}" if row["remove_fraction"] else "dense"
        if row.get("error"):
            what = f"FAILED: {row['error']}"
        else:
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            what = (f"{row['layers']} layers, retention {fmt(row['retention'])}, above chance "
                    f"{fmt(row['retention_above_chance'])}")
        took = row["seconds"] if row["seconds"] is not None else row["heldout_seconds"]
        print(f"[{len(self.rows):>2}/{self.total}] {row['method']:<22} {where:<13} {what} "
              f"({took:.1f}s)", flush=True)


def score_heldout(evaluator, genome, n: int | None):
    t0 = time.perf_counter()
    return evaluator.score(genome, "heldout", n), time.perf_counter() - t0


def score_of(row: dict, n: int | None):
    """The held-out Score a finished row holds (its metrics), for --resume."""
    from gptailor_merge.scoring import Score, TaskScore

    return Score("heldout", n, {k: TaskScore(k, dict(m)) for k, m in row["tasks"].items()})


def dense_rows(rows: Rows, evaluator, names: Sequence[str], n: int | None) -> None:
    from gptailor_merge.heldout import dense_genomes
    from gptailor_merge.scoring import retention

    fam = rows.family
    scored = []
    for i, (name, genome) in enumerate(dense_genomes(fam.n_layers, fam.n_candidates, list(names))):
        method = "dense-base" if i == 0 else f"ft-{name}"
        if (method, 0.0) in rows.previous:
            old = rows.previous[(method, 0.0)]
            scored.append((method, genome, score_of(old, n), old["heldout_seconds"]))
            continue
        score, seconds = score_heldout(evaluator, genome, n)
        scored.append((method, genome, score, seconds))
    rows.base = scored[0][2]
    rows.best_dense = max((s for _, _, s, _ in scored), key=lambda s: _mean(
        retention(s, rows.base, rows.tasks, metric=rows.metric).values()) or 0.0)
    for method, genome, score, seconds in scored:
        rows.add(method, 0.0, genome.kept, score, seconds=None, heldout_seconds=seconds)


def baseline_rows(rows: Rows, calib, evaluator, tokenizer, fraction: float, n_remove: int,
                  n: int | None, args: argparse.Namespace) -> None:
    from gptailor_merge.baselines import canonical_name, collapsed_model, run_baseline
    from gptailor_merge.errors import GptailorError
    from gptailor_merge.scoring import evaluate_model

    options = {"laco": {"threshold": args.laco_threshold}}
    for method in BASELINE_METHODS:
        if rows.reuse(method, fraction):
            continue
        t0 = time.perf_counter()
        try:
            result = run_baseline(canonical_name(method), calib, n_remove,
                                  **options.get(method, {}))
        except GptailorError as exc:  # LaCo above its threshold: the table says so
            rows.failed(method, fraction, rows.family.n_layers - n_remove,
                        f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
            continue
        seconds = time.perf_counter() - t0
        if result.collapsed:  # LaCo's collapsed layers exist only in this model: score it directly
            t1 = time.perf_counter()
            model = collapsed_model(calib, result)
            score = evaluate_model(model, tokenizer, evaluator.tasks, split="heldout", n_examples=n,
                                   batch_size=evaluator.batch_size, max_length=evaluator.max_length)
            calib.stitcher.build(calib.full_genome())  # the stitcher's model back to plain layers
            heldout_seconds = time.perf_counter() - t1
        else:
            score, heldout_seconds = score_heldout(evaluator, result.genome, n)
        rows.add(method, fraction, result.genome.kept, score, seconds=seconds,
                 heldout_seconds=heldout_seconds, removed=result.removed,
                 collapsed_layers=sorted(result.collapsed) if result.collapsed else None)


def gptailor_rows(rows: Rows, evaluator, family_part: dict, fraction: float, n: int | None,
                  runs_dir: Path, args: argparse.Namespace) -> None:
    from gptailor_merge.genome import Genome
    from gptailor_merge.optimize import optimize

    for method, use_candidates in (("gptailor-removal-only", False), ("gptailor", True)):
        if rows.reuse(method, fraction):
            continue
        out = runs_dir / f"remove{fraction:g}-{method}"
        config = run_config(family_part, args, remove_fraction=fraction,
                            search={"use_candidates": use_candidates}, out_dir=str(out))
        resume = out if args.resume and (out / "journal.jsonl").is_file() else None
        t0 = time.perf_counter()
        outcome = optimize(config, progress=False, resume=resume, requested=config,
                           heldout=not args.lean)
        seconds = time.perf_counter() - t0
        summary = outcome.summary
        genome = Genome.from_dict(summary["best_genome"])
        score, heldout_seconds = score_heldout(evaluator, genome, n)
        # optimize scored the same recipe on the same held-out examples: the two must agree
        own = next((r["tasks"] for r in summary["rows"] if r["model"] == "gptailor-best"), None)
        diff = None if own is None else round(max(
            (abs(own[t][m] - ts.metrics[m]) for t, ts in score.tasks.items()
             for m in ("acc", "nll") if m in ts.metrics), default=0.0), 9)
        s = summary["search"]
        rows.add(method, fraction, genome.kept, score, seconds=seconds,
                 heldout_seconds=heldout_seconds, trials=args.trials,
                 removed=list(genome.removed), layer_map=genome.describe(),
                 search={"evaluated": s["evaluated"], "full_fidelity_evaluations":
                         s["full_fidelity_evaluations"], "search_seconds": s["search_seconds"],
                         "best_search_retention": s["best_search_retention"],
                         "optimizer": s["optimizer"], "rungs": s["rungs"]},
                 optimize_heldout_max_abs_diff=diff,
                 mergekit_vs_stitch_max_abs_diff=summary["mergekit_vs_stitch_max_abs_diff"],
                 resumed=resume is not None,
                 run_dir=str(outcome.run_dir) if args.runs_dir else None)


SAME_SETTINGS = ("family", "trials", "max_examples", "heldout_examples", "seed", "laco_threshold",
                 "batch_size", "max_length", "calibration_texts", "demo_preset", "dtype")


def previous_rows(path: Path, result: dict) -> dict[tuple[str, float], dict]:
    """Finished rows of an earlier run written to `path` with the same settings (else an error)."""
    old = json.loads(path.read_text())
    differ = [k for k in SAME_SETTINGS if old.get("args", {}).get(k) != result["args"].get(k)]
    if differ:
        raise SystemExit(f"--resume: {path} was written with other settings ({', '.join(differ)}); "
                         "rerun with those or give another --json")
    return {(r["method"], r["remove_fraction"]): r for r in old.get("rows", [])}


# ---- report -----------------------------------------------------------------------------------
def table(rows: Sequence[dict], tasks) -> str:
    def cell(metrics: dict) -> str:
        if not metrics:
            return "-"
        return f"{metrics['acc']:.3f}" if "acc" in metrics else f"{metrics['ppl']:.2f}"

    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    head = ["method", "remove", "layers", "params", *(t.name for t in tasks), "retention",
            "above chance", "text", "trials", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], f"{r['remove_fraction']:g}", str(r["layers"]), fmt(r["params"], ","),
            *(cell(r["tasks"].get(t.name, {})) for t in tasks), fmt(r["retention"], ".3f"),
            fmt(r["retention_above_chance"], ".3f"), fmt(r.get("retention_text"), ".3f"),
            fmt(r["trials"], "d"),
            fmt(r["seconds"], ".1f")]) + " |")
    return "\n".join(lines)


def undefined_above_chance(rows: Rows) -> list[str]:
    """Multiple-choice tasks where the dense base is at or below chance (no above-chance ratio)."""
    return [t.name for t in rows.tasks if t.kind == "multiple_choice"
            and rows.base.tasks[t.name].metrics[rows.metric] <= t.chance]


def footnote(rows: Rows, args: argparse.Namespace) -> str:
    used = ", ".join(f"{t.name} {len(t.examples('heldout', args.heldout_examples))}" for t in rows.tasks)
    lines = [
        f"Task columns: accuracy (multiple choice), perplexity (`ppl_*`), on the same held-out "
        f"examples for every row ({used}). Retention: mean over tasks of score / dense base "
        f"(ppl_base / ppl for perplexity); above chance: mean of (acc - chance) / "
        f"(acc_base - chance) over multiple-choice tasks; text: mean of ppl_base / ppl over the "
        f"perplexity tasks alone (small models' multiple-choice scores are noisy). Seconds: the method's own wall time "
        f"(baselines: calibration + selection; GPTailor: the whole `optimize` run, {args.trials} "
        f"trials, its search loop alone under `search.search_seconds` in the JSON).",
    ]
    undefined = undefined_above_chance(rows)
    if undefined:
        lines.append(f"Above-chance retention leaves out {', '.join(undefined)}: the dense base "
                     f"scores at or below chance there.")
    return "\n".join(lines)


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-texts", type=int, default=32,
                   help="search-split texts per perplexity task that the baselines calibrate on "
                        "(default 32, as `prune`)")
    p.add_argument("--laco-threshold", type=float, default=0.65)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep the GPTailor run folders (recipes, models, reports) here; "
                        "default: a temporary folder, deleted")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the finished rows of --json (same "
                        "settings) and resume GPTailor searches from their journals in --runs-dir")
    p.add_argument("--lean", action="store_true",
                   help="GPTailor runs skip optimize's own held-out summary (dense and Pareto rows, "
                        "mergekit check, report): this benchmark scores the best recipe itself")
    args = p.parse_args(argv)
    args.remove = args.remove or list(DEMO_FRACTIONS if args.family == "demo" else SMOLLM2_FRACTIONS)
    bad = [f for f in args.remove if not 0.0 < f < 1.0]
    if bad:
        p.error(f"--remove {bad[0]}: a fraction of layers in (0, 1), e.g. 0.25")
    if args.resume and args.runs_dir is None:
        p.error("--resume needs --runs-dir (the GPTailor journals to resume)")
    if min(args.trials, args.max_examples, args.calibration_texts, args.heldout_examples or 1) < 1:
        p.error("--trials, --max-examples, --heldout-examples and --calibration-texts must be at "
                "least 1")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.json = args.json or Path(f"benchmarks/results/quality-{args.family}.json")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_torch(args.threads)
    # an undefined above-chance ratio warns on every score; the footnote says it once
    logging.getLogger("gptailor_merge.scoring.objectives").setLevel(logging.ERROR)
    from transformers import AutoTokenizer

    from gptailor_merge.baselines import Calibration, calibration_texts
    from gptailor_merge.genome import resolve_target
    from gptailor_merge.resolve import load_tasks, resolve_family
    from gptailor_merge.search import Evaluator
    from gptailor_merge.stitch import Stitcher

    started = time.perf_counter()
    family_part = family_config(args)
    config = run_config(family_part, args)
    family, names = resolve_family(config, progress=True)
    tasks = load_tasks(config)
    n_removes = {}
    for fraction in args.remove:
        n_removes[fraction] = family.n_layers - resolve_target(family.n_layers, remove_fraction=fraction)
        if n_removes[fraction] == 0:
            raise SystemExit(f"--remove {fraction} removes no layer of {family.n_layers}; "
                             "give a larger fraction")
    text_tasks = [t for t in tasks if t.kind == "perplexity"]
    if not text_tasks:
        raise SystemExit("the baselines calibrate on text (perplexity) tasks; this family has none")
    ev, n = config.eval, config.eval.heldout_examples
    stitcher = Stitcher(family, device=ev.device, dtype=ev.dtype)
    tokenizer = AutoTokenizer.from_pretrained(family.base.path)
    evaluator = Evaluator(stitcher, tokenizer, tasks, batch_size=ev.batch_size,
                          max_length=ev.max_length, metric=config.search.metric)
    calib = Calibration(stitcher, tokenizer, tuple(calibration_texts(text_tasks, args.calibration_texts)),
                        batch_size=ev.batch_size, max_length=ev.max_length)
    total = len(names) + len(args.remove) * (len(BASELINE_METHODS) + 2)
    rows = Rows(family, tasks, config.search.metric, total)
    print(f"quality: {args.family} family ({', '.join(names)}), {family.n_layers} layers, removing "
          f"{', '.join(f'{f:g} ({k} layers)' for f, k in n_removes.items())}; held-out examples "
          f"per task: {n or 'all'}", flush=True)

    result = {
        "benchmark": "quality", "git": git_sha(), "hardware": hardware(), "seed": args.seed,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "family": {"name": args.family, "members": names, "n_layers": family.n_layers,
                   "total_params": family.total_params,
                   **({"demo_preset": args.demo_preset} if args.family == "demo" else {})},
        "heldout_examples": n,
        "tasks": [{"name": t.name, "kind": t.kind, "chance": round(t.chance, 6),
                   "heldout_used": len(t.examples("heldout", n))} for t in tasks],
        "calibration": {"split": "search", "tasks": [t.name for t in text_tasks],
                        "n_examples_per_task": args.calibration_texts, "n_texts": len(calib.texts)},
        "complete": False, "rows": rows.rows,
    }

    if args.resume and args.json.is_file():
        rows.previous = previous_rows(args.json, result)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="gptailor-quality-"))
    try:
        dense_rows(rows, evaluator, names, n)
        result["above_chance_undefined"] = undefined_above_chance(rows)
        write_result(args.json, result)
        for fraction, n_remove in n_removes.items():
            baseline_rows(rows, calib, evaluator, tokenizer, fraction, n_remove, n, args)
            write_result(args.json, result)
            gptailor_rows(rows, evaluator, family_part, fraction, n, runs_dir, args)
            write_result(args.json, result)  # partial results survive an interrupted run
    finally:
        if args.runs_dir is None:
            shutil.rmtree(runs_dir, ignore_errors=True)

    result["complete"] = True
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(table(rows.rows, tasks))
    print()
    print(footnote(rows, args))
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
