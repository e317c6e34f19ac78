"""Held-out summary of a finished search: dense base, each fine-tune, and the winners.

The winner is scored twice on the held-out split, stitched in memory and materialized by mergekit;
the two must agree (same model). Produces the summary dict and its markdown table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from gptailor_merge.genome import Genome
from gptailor_merge.materialize import materialize_with_mergekit
from gptailor_merge.recipe import Recipe
from gptailor_merge.scoring import (
    Score,
    evaluate_model,
    load_model_folder,
    retention,
    retention_above_chance,
)

logger = logging.getLogger(__name__)

MAX_PARETO_ROWS = 3
EQUALITY_TOLERANCE = 1e-4


def _mean(values) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), 6) if finite else None


def _row(name: str, kind: str, genome: Genome, score: Score, base: Score, best_dense: Score | None,
         evaluator, family) -> dict:
    tasks = evaluator.tasks
    metric = evaluator.metric
    row = {
        "model": name,
        "kind": kind,
        "layers": genome.n_kept,
        "params": family.params_with_layers(genome.kept),
        "tasks": {k: {m: round(v, 6) for m, v in ts.metrics.items()} for k, ts in score.tasks.items()},
        "retention": _mean(retention(score, base, tasks, metric=metric).values()),
        "retention_above_chance": _mean(retention_above_chance(score, base, tasks, metric=metric).values()),
    }
    if best_dense is not None:
        row["retention_vs_best_dense"] = _mean(retention(score, best_dense, tasks, metric=metric).values())
    return row


def dense_genomes(n_layers: int, n_candidates: int, names: list[str]) -> list[tuple[str, Genome]]:
    """The untouched family members as genomes (the base, and every layer from candidate j)."""
    out = [(names[0], Genome.base_only(n_layers, n_candidates))]
    for j in range(n_candidates):
        out.append((names[j + 1], Genome.from_choices(n_layers, n_candidates, [], [(j,)] * n_layers)))
    return out


def heldout_summary(family, names, evaluator, best_genome: Genome, result, run_dir: Path, config) -> dict:
    n = config.eval.heldout_examples
    dense = [(name, g, evaluator.score(g, "heldout", n)) for name, g in dense_genomes(family.n_layers, family.n_candidates, names)]
    base_score = dense[0][2]
    tasks = evaluator.tasks
    best_name, _, best_dense_score = max(
        dense, key=lambda item: _mean(retention(item[2], base_score, tasks, metric=evaluator.metric).values()) or 0.0
    )
    rows = [_row(name, "dense", g, s, base_score, best_dense_score, evaluator, family) for name, g, s in dense]

    best_stitched = evaluator.score(best_genome, "heldout", n)
    rows.append(_row("gptailor-best", "tailored", best_genome, best_stitched, base_score, best_dense_score, evaluator, family))
    for trial in sorted(result.pareto, key=lambda t: t.loss)[:MAX_PARETO_ROWS]:
        if trial.genome_id == best_genome.genome_id:
            continue
        g = Genome.from_dict(trial.genome)
        rows.append(_row(f"pareto-{trial.genome_id}", "tailored", g, evaluator.score(g, "heldout", n),
                         base_score, best_dense_score, evaluator, family))

    # the same recipe through stock mergekit: must score the same as the stitched model
    recipe = Recipe.load(run_dir / "best.yaml")
    model_dir = materialize_with_mergekit(recipe, run_dir / "best_model", device=config.eval.device, overwrite=True)
    model, tokenizer = load_model_folder(model_dir, device=config.eval.device)
    merged_score = evaluate_model(model, tokenizer, tasks, split="heldout", n_examples=n,
                                  batch_size=evaluator.batch_size, max_length=evaluator.max_length)
    diffs = [abs(merged_score.tasks[k].metrics[m] - best_stitched.tasks[k].metrics[m])
             for k in best_stitched.tasks for m in ("acc", "acc_norm", "nll") if m in best_stitched.tasks[k].metrics]
    max_diff = max(diffs) if diffs else 0.0
    if max_diff > EQUALITY_TOLERANCE:
        logger.error("mergekit model and stitched model disagree on held-out scores (max diff %.2e)", max_diff)

    return {
        "family": {"base": family.base.model_id, "candidates": [c.model_id for c in family.candidates], "names": names},
        "n_layers": family.n_layers,
        "target_layers": best_genome.n_kept,
        "heldout_examples": n,
        "best_dense": best_name,
        "best_recipe": str(run_dir / "best.yaml"),
        "best_model": str(model_dir),
        "best_genome": best_genome.to_dict(),
        "best_layer_map": best_genome.describe(),
        "mergekit_vs_stitch_max_abs_diff": max_diff,
        "search": {
            **result.summary(),
            "objective_tasks": [t.name for t in evaluator.objective_tasks()],
            "chance_z": evaluator.chance_z,
        },
        "rows": rows,
    }


def _objective_line(search: dict, tasks: list[str]) -> list[str]:
    """Says which tasks the search left out of its objective (the dense base at chance on them)."""
    kept = search.get("objective_tasks")
    left_out = [t for t in tasks if kept is not None and t not in kept]
    if not left_out:
        return []
    return [f"Objective: {', '.join(kept)}; left out, the dense base being within "
            f"{search['chance_z']:g} standard errors of chance on the top rung: {', '.join(left_out)} "
            f"(still scored above)."]


def summary_markdown(summary: dict) -> str:
    rows = summary["rows"]
    tasks = list(rows[0]["tasks"])

    def cell(task_metrics: dict) -> str:
        if "acc" in task_metrics:
            return f"{task_metrics['acc']:.3f}"
        return f"{task_metrics['ppl']:.2f}"

    head = ["model", "layers", "params", *tasks, "retention vs base", "vs best dense", "above chance"]
    lines = [
        f"# gptailor-merge run: held-out results ({summary['target_layers']} of {summary['n_layers']} layers kept)",
        "",
        "Multiple-choice tasks show accuracy, perplexity tasks (`ppl_*`) show perplexity. Retention is the mean over "
        "tasks of score / reference (ppl_ref / ppl for perplexity).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append("| " + " | ".join([r["model"], str(r["layers"]), f"{r['params']:,}",
                                         *(cell(r["tasks"][t]) for t in tasks), fmt(r["retention"]),
                                         fmt(r.get("retention_vs_best_dense")),
                                         fmt(r.get("retention_above_chance"))]) + " |")
    s = summary["search"]
    lines += [
        "",
        f"Search: {s['trials']} trials ({s['evaluated']} evaluated, optimizer {s['optimizer']}), rungs {s['rungs']} "
        f"examples per task; {s['full_fidelity_evaluations']} full-fidelity evaluations, "
        f"{s['full_fidelity_evaluations_saved']} saved by successive halving; {s['search_seconds']} s.",
        *_objective_line(s, tasks),
        f"Best recipe: `{summary['best_recipe']}`; mergekit vs stitcher held-out max |diff| = "
        f"{summary['mergekit_vs_stitch_max_abs_diff']:.2e}.",
        "",
        "Layer map of the best recipe: " + "; ".join(f"{i}: {d}" for i, d in enumerate(summary["best_layer_map"])),
    ]
    return "\n".join(lines) + "\n"
