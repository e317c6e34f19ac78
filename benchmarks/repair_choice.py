"""Repair settings chosen on validation: calibration sources (text, all) x objective (lstsq, cosine).

For the 25% genomes of a finished quality result (ShortGPT, greedy-ppl, GPTailor's winner), each
variant is fitted with the run's repair (`run.repair_run.FinalistRepair`) and scored on every
validation example, which no search, baseline or fit read; the table gives the yardstick, each task
and the paired interval against the unrepaired model and against the text-only least-squares repair
(the earlier default). Held-out is not read: this is how the repair's defaults are chosen.

    python benchmarks/repair_choice.py --from benchmarks/results/quality-demo-25.json \
        --json benchmarks/results/repair-choice/demo-25.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gptailor_merge.bench.environment import environment, smollm2_root, write_result
from gptailor_merge.core.config import RunConfig
from gptailor_merge.core.genome import Genome
from gptailor_merge.run.repair_run import FinalistRepair
from gptailor_merge.run.resolve import load_tasks, resolve_family
from gptailor_merge.scoring import counted_tasks, symmetric_retention
from gptailor_merge.scoring.intervals import interval_text, paired_bootstrap, skill_changes
from gptailor_merge.search.evaluator import build_evaluator

VARIANTS = {"text/lstsq": {"sources": "text", "objective": "lstsq"},
            "all/lstsq": {"sources": "all", "objective": "lstsq"},
            "text/cosine": {"sources": "text", "objective": "cosine"},
            "all/cosine": {"sources": "all", "objective": "cosine"},
            "text/lstsq/0.5": {"sources": "text", "objective": "lstsq", "strength": 0.5},
            "text/lstsq/0.75": {"sources": "text", "objective": "lstsq", "strength": 0.75},
            "all/lstsq/tokens": {"sources": "all", "objective": "lstsq", "balance": "tokens"},
            "all/cosine/tokens": {"sources": "all", "objective": "cosine", "balance": "tokens"},
            "all/lstsq/tokens/0.5": {"sources": "all", "objective": "lstsq", "balance": "tokens", "strength": 0.5}}
GENOME_ROWS = ("shortgpt", "greedy-ppl", "gptailor")


def family_part(name: str, preset: str) -> dict:
    """The family and tasks of a quality result (the demo family, or the built SmolLM2 one)."""
    from gptailor_merge.core.config import DEMO, DEMO_TASKS
    from gptailor_merge.scoring import register_task_dir

    if name == "demo":
        return {"family": {"base": DEMO, "demo_preset": preset}, "tasks": list(DEMO_TASKS)}
    root = smollm2_root()
    members = ("base", "prose", "code", "math")
    return {"family": {"base": str(root / "base"), "candidates": [str(root / m) for m in members[1:]],
                       "names": list(members)}, "tasks": register_task_dir(root)}


def genome_of(row: dict, n_layers: int, n_candidates: int) -> Genome:
    if row.get("genome"):
        return Genome.from_dict(row["genome"])
    return Genome.base_only(n_layers, n_candidates, row["removed"])


def without_each_map(evaluator, repairer: FinalistRepair, genome: Genome, n: int | None, name: str) -> dict:
    """`name`'s repair of `genome` with each fitted map left out in turn, scored on validation."""
    from gptailor_merge.repair.fit import apply_maps
    from gptailor_merge.scoring import evaluate_model

    _, info = repairer.repaired_model(genome)
    out = {}
    for layer in info.maps:
        start = time.perf_counter()
        maps = {i: t for i, t in info.maps.items() if i != layer}
        model = apply_maps(evaluator.stitcher.build(genome), evaluator.stitcher.family, genome, maps)
        score = evaluate_model(model, evaluator.tokenizer, evaluator.tasks, split="validation", n_examples=n,
                               batch_size=evaluator.batch_size, max_length=evaluator.max_length,
                               shared_context=evaluator.shared_context)
        out[f"{name}/-{layer}"] = (score, {"seconds": round(time.perf_counter() - start, 1), "maps": len(maps)})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", type=Path, required=True, help="a quality.py result JSON")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
    p.add_argument("--genomes", nargs="+", default=list(GENOME_ROWS), choices=list(GENOME_ROWS))
    p.add_argument("--validation-examples", type=int, default=None,
                   help="the first N validation examples per task (default: every one)")
    p.add_argument("--drop-each-map", action="store_true",
                   help="also score the first variant's repair with each of its maps left out in turn "
                        "(which cut's map costs which skill)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    old = json.loads(args.source.read_text())
    a = old["args"]
    config = RunConfig.from_dict({**family_part(a["family"], a.get("demo_preset", "default")),
                                  "eval": {"batch_size": a["batch_size"], "max_length": a["max_length"]},
                                  "search": {"seed": a["seed"]}})
    family, _ = resolve_family(config, progress=False)
    tasks = load_tasks(config)
    evaluator = build_evaluator(config, family, tasks)
    n = args.validation_examples
    if n is not None and n < 1:
        p.error("--validation-examples must be at least 1")
    reference = evaluator.reference("validation", n)
    counted = counted_tasks(reference, tasks, metric=evaluator.metric, chance_z=evaluator.chance_z or 2.0)
    rows = {r["method"]: r for r in old["rows"] if r.get("remove_fraction") == 0.25}
    repairers = {name: FinalistRepair(evaluator, config, **VARIANTS[name]) for name in args.variants}
    out: dict = {"benchmark": "repair_choice", "source": str(args.source), "counted_tasks": counted,
                 "variants": {n: VARIANTS[n] for n in args.variants}, "rows": [], **environment(args)}
    lines = ["| genome | repair | retention_sym | text | " + " | ".join(t.name for t in tasks)
             + " | vs unrepaired | vs text/lstsq | fit s |", "|---" * (6 + len(tasks)) + "|"]
    for gname in args.genomes:
        genome = genome_of(rows[gname], family.n_layers, family.n_candidates)
        scores = {"none": (evaluator.score(genome, "validation", n), {})}
        for name, repairer in repairers.items():
            start = time.perf_counter()
            scores[name] = repairer(genome, n)
            scores[name][1]["seconds"] = round(time.perf_counter() - start, 1)
        if args.drop_each_map:
            scores.update(without_each_map(evaluator, repairers[args.variants[0]], genome, n, args.variants[0]))
        for name, (score, record) in scores.items():
            ret = symmetric_retention(score, reference, tasks, metric=evaluator.metric, counted=counted)
            vs = {other: paired_bootstrap(score, scores[other][0], reference, tasks, counted,
                                          metric=evaluator.metric)
                  for other in ("none", "text/lstsq") if other in scores and other != name}
            cells = {t.name: score.tasks[t.name].metrics.get("acc", score.tasks[t.name].metrics.get("ppl"))
                     for t in tasks}
            out["rows"].append({"genome": gname, "repair": name, "retention_sym": ret.retention_sym,
                                "retention_sym_text": ret.retention_sym_text, "tasks": cells,
                                "vs": vs, "fit": record,
                                "skills_vs_unrepaired": None if name == "none" else
                                skill_changes(score, scores["none"][0], tasks, counted, metric=evaluator.metric)})
            lines.append(f"| {gname} | {name} | {ret.retention_sym:.3f} | {ret.retention_sym_text:.3f} | "
                         + " | ".join(f"{v:.3f}" for v in cells.values())
                         + f" | {interval_text(vs.get('none'))} | {interval_text(vs.get('text/lstsq'))} | "
                         + f"{record.get('fit_seconds', '')} |")
            print(lines[-1], flush=True)
            write_result(args.json, {**out, "table": lines})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
