"""Held-out summary of a finished search: the family's real members and the winners.

Members are scored from their own folders; the winner is scored twice on the held-out split,
stitched in memory and materialized by mergekit, and the two must agree (same model). Every row
carries the yardstick (`scoring.objectives`): `retention_sym`, `retention_sym_text`, `worst_task`,
per-task log ratios against the dense base, and tailored rows a paired interval against the best
member. Produces the summary dict and its markdown table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from gptailor_merge.core.genome import Genome
from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
from gptailor_merge.materialize.recipe import Recipe
from gptailor_merge.scoring import (
    Score,
    evaluate_model,
    load_model_folder,
    mean_of_ratios,
    symmetric_retention,
)
from gptailor_merge.scoring.intervals import paired_bootstrap

logger = logging.getLogger(__name__)

MAX_PARETO_ROWS = 3
EQUALITY_TOLERANCE = 1e-4


def yardstick_row(score: Score, base: Score, tasks, counted, metric: str) -> dict:
    """The yardstick columns of one row (shared by summary.json, the card and the benchmarks)."""
    ret = symmetric_retention(score, base, tasks, metric=metric, counted=counted)
    ratio_mean = mean_of_ratios(score, base, tasks, metric=metric)
    return {**ret.to_dict(),
            "mean_of_ratios": round(ratio_mean, 6) if math.isfinite(ratio_mean) else None}


def _row(name: str, kind: str, n_layers: int, params: int, score: Score, base: Score, counted,
         evaluator) -> dict:
    return {
        "model": name,
        "kind": kind,
        "layers": n_layers,
        "params": params,
        "tasks": {k: {m: round(v, 6) for m, v in ts.metrics.items()} for k, ts in score.tasks.items()},
        **yardstick_row(score, base, evaluator.tasks, counted, evaluator.metric),
    }


def member_scores(family, names, evaluator, n: int | None) -> list[tuple[str, Score]]:
    """The real family members, each loaded from its own folder and scored on the held-out split
    (a fine-tune's embeddings and head are its own, not the base's)."""
    out = []
    for name, member in zip(names, [family.base, *family.candidates], strict=True):
        model, tokenizer = load_model_folder(member.path, device=evaluator.stitcher.device,
                                             dtype=evaluator.stitcher.dtype)
        out.append((name, evaluate_model(model, tokenizer, evaluator.tasks, split="heldout",
                                         n_examples=n, batch_size=evaluator.batch_size,
                                         max_length=evaluator.max_length,
                                         shared_context=evaluator.shared_context)))
        del model
    return out


def mergekit_heldout_diff(run_dir: Path, evaluator, stitched: Score, device: str) -> tuple[Path, float]:
    """`run_dir/best.yaml` through stock mergekit into `best_model/`, scored on the same held-out
    examples as the stitched model's `stitched` score: (the folder, max |diff| of acc, acc_norm and
    nll). They are one model, so it must be ~0; a larger one is logged as an error."""
    model_dir = materialize_with_mergekit(Recipe.load(run_dir / "best.yaml"), run_dir / "best_model",
                                          device=device, overwrite=True)
    model, tokenizer = load_model_folder(model_dir, device=device)
    merged = evaluate_model(model, tokenizer, evaluator.tasks, split="heldout",
                            n_examples=stitched.n_examples, batch_size=evaluator.batch_size,
                            max_length=evaluator.max_length, shared_context=evaluator.shared_context)
    diffs = [abs(merged.tasks[k].metrics[m] - ts.metrics[m])
             for k, ts in stitched.tasks.items() for m in ("acc", "acc_norm", "nll") if m in ts.metrics]
    max_diff = max(diffs) if diffs else 0.0
    if max_diff > EQUALITY_TOLERANCE:
        logger.error("mergekit model and stitched model disagree on held-out scores (max diff %.2e)", max_diff)
    return model_dir, max_diff


def heldout_summary(family, names, evaluator, selection, result, run_dir: Path, config) -> dict:
    """Members, the winner (`selection.winner`, chosen on validation), the best baseline seed and
    the Pareto rows, scored on held-out; the winner's row carries `vs_best_baseline`."""
    from gptailor_merge.scoring import counted_tasks

    best_genome = selection.winner.genome
    n = config.eval.heldout_examples
    tasks, metric = evaluator.tasks, evaluator.metric
    members = member_scores(family, names, evaluator, n)
    base_score = members[0][1]
    counted = counted_tasks(base_score, tasks, metric=metric, chance_z=evaluator.chance_z or 2.0)
    full = family.params_with_layers(list(range(family.n_layers)))
    rows = [_row(name, "member", family.n_layers, full, s, base_score, counted, evaluator)
            for name, s in members]
    best_member = max(range(len(members)), key=lambda i: rows[i]["retention_sym"] or 0.0)

    def tailored(name: str, genome: Genome, score: Score) -> dict:
        row = _row(name, "tailored", genome.n_kept, family.params_with_layers(genome.kept), score,
                   base_score, counted, evaluator)
        row["vs_best_member"] = {"member": members[best_member][0],
                                 **paired_bootstrap(score, members[best_member][1], base_score,
                                                    tasks, counted, metric=metric)}
        return row

    best_stitched = evaluator.score(best_genome, "heldout", n)
    winner = tailored("gptailor-best", best_genome, best_stitched)
    winner["selected_from"] = selection.source
    rows.append(winner)
    seed = selection.best_baseline  # the best single-model baseline (the winner may be a search seed)
    if seed is not None:
        seed_score = (best_stitched if seed.genome.genome_id == best_genome.genome_id
                      else evaluator.score(seed.genome, "heldout", n))
        rows.append(tailored(f"best-baseline ({seed.name})", seed.genome, seed_score))
        winner["vs_best_baseline"] = {"baseline": seed.name,
                                      **paired_bootstrap(best_stitched, seed_score, base_score,
                                                         tasks, counted, metric=metric)}
    for trial in sorted(result.pareto, key=lambda t: t.loss)[:MAX_PARETO_ROWS]:
        if trial.genome_id == best_genome.genome_id:
            continue
        g = Genome.from_dict(trial.genome)
        rows.append(tailored(f"pareto-{trial.genome_id}", g, evaluator.score(g, "heldout", n)))

    model_dir, max_diff = mergekit_heldout_diff(run_dir, evaluator, best_stitched, config.eval.device)

    return {
        "family": {"base": family.base.model_id, "candidates": [c.model_id for c in family.candidates], "names": names},
        "n_layers": family.n_layers,
        "target_layers": best_genome.n_kept,
        "heldout_examples": n,
        "heldout_n_per_task": {k: int(v.metrics["n"]) for k, v in base_score.tasks.items()},
        "counted_tasks": counted,
        "best_dense": members[best_member][0],
        "best_recipe": str(run_dir / "best.yaml"),
        "best_model": str(model_dir),
        "best_genome": best_genome.to_dict(),
        "best_layer_map": best_genome.describe(),
        "mergekit_vs_stitch_max_abs_diff": max_diff,
        "selection": selection.to_dict(),
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


def _selection_lines(selection: dict | None, search: dict) -> list[str]:
    """How the winner was chosen: on validation, against the best baseline seed, in plain words."""
    if not selection:
        return []
    w = selection["winner"]
    origin = ({"seed": "a baseline seed", "search seed": "a seed of the search"}.get(w["kind"], "a seed")
              if selection["source"] == "seed" else f"the search ({w['origin']})")
    n = selection.get("validation_examples")
    return [f"Winner: {w['name']}, from {origin}, chosen on the validation split "
            f"({'all' if n is None else n} examples per task; finalists, baseline seeds and the best search seed "
            f"scored there): {selection['message']}.",
            f"Budget: {search['trials']} trials, rungs {search['rungs']} examples per task, "
            f"{search.get('trial_seconds', search['search_seconds'])} s of trials (as first run; "
            f"a resumed run replays them)."]


def _repair_lines(repair: dict | None) -> list[str]:
    """Whether the winner's repair was kept, and why (chosen on validation)."""
    if not repair:
        return []
    where = ("best_model_repaired/ is the deliverable" if repair.get("kept") else
             "best_model/ (the recipe's model) is the deliverable; no repaired folder was written")
    fit = (repair.get("validation") or {})
    cost = (f" Fit {fit['fit_seconds']} s, validation scoring {fit['score_seconds']} s."
            if "fit_seconds" in fit else "")
    return [f"Repair (chosen on validation): {repair.get('message')}; {where}.{cost}"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary_markdown(summary: dict) -> str:
    from gptailor_merge.scoring.intervals import interval_text

    rows = summary["rows"]
    tasks = list(rows[0]["tasks"])
    counted = summary.get("counted_tasks", tasks)
    n_per_task = summary.get("heldout_n_per_task", {})

    def cell(task_metrics: dict) -> str:
        if "acc" in task_metrics:
            return f"{task_metrics['acc']:.3f}"
        return f"{task_metrics['ppl']:.2f}"

    def head_of(t: str) -> str:
        mark = "" if t in counted else " (not counted)"
        return f"{t} (n={n_per_task[t]}){mark}" if t in n_per_task else f"{t}{mark}"

    head = ["model", "layers", "params", *map(head_of, tasks), "retention_sym", "text", "worst task",
            "vs best member (diff of mean log ratio, 95% CI)", "vs best baseline"]
    lines = [
        f"# gptailor-merge run: held-out results ({summary['target_layers']} of {summary['n_layers']} layers kept)",
        "",
        "Multiple-choice tasks show accuracy, perplexity tasks (`ppl_*`) show perplexity. `retention_sym` is "
        "exp(mean log ratio) against the dense base over the counted tasks (perplexity: log(ppl_base / ppl); "
        "multiple choice: log((acc - chance) / (acc_base - chance)), counted where the base beats chance by 2 "
        "standard errors); `text` the same over the perplexity tasks; the interval is a paired bootstrap over "
        "held-out examples.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        worst = r.get("worst_task")
        lines.append("| " + " | ".join([
            r["model"], str(r["layers"]), f"{r['params']:,}", *(cell(r["tasks"][t]) for t in tasks),
            _fmt(r.get("retention_sym")), _fmt(r.get("retention_sym_text")),
            f"{worst['task']} {worst['ratio']:.3f}" if worst else "-",
            interval_text(r.get("vs_best_member")), interval_text(r.get("vs_best_baseline"))]) + " |")
    s = summary["search"]
    selection = summary.get("selection")
    lines += [
        "",
        f"Search: {s['trials']} trials ({s['evaluated']} evaluated, {s.get('optimizer_trials', '?')} from the "
        f"optimizer, optimizer {s['optimizer']}), rungs {s['rungs']} examples per task; "
        f"{s['full_fidelity_evaluations']} full-fidelity evaluations; {s['search_seconds']} s. "
        f"Best trial on the search split: {s.get('best_trial', '?')} "
        f"({'a seed' if s.get('winner_from_seed') else 'from the optimizer'}).",
        *_selection_lines(selection, s),
        *_repair_lines(summary.get("repair")),
        *_objective_line(s, tasks),
        f"Best recipe: `{summary['best_recipe']}`; mergekit vs stitcher held-out max |diff| = "
        f"{summary['mergekit_vs_stitch_max_abs_diff']:.2e}.",
        "",
        "Layer map of the best recipe: " + "; ".join(f"{i}: {d}" for i, d in enumerate(summary["best_layer_map"])),
    ]
    return "\n".join(lines) + "\n"
