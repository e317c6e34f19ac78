"""Report of a finished run: layer-map, Pareto-front and search-trace figures, and `report.md`.

Reads a run folder (journal.jsonl, best.yaml, summary.json / summary.md, config.yaml) and writes
PNGs and markdown next to them; never loads a model. Plots on matplotlib's Agg canvas directly (no
pyplot, no global backend switch). `plot_layer_map` and `layer_map_markdown` are reused by hub.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.core.atomic import atomic_path, write_text_atomic
from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.genome import Genome
from gptailor_merge.core.merge_methods import merge_method
from gptailor_merge.search.journal import Journal, Trial, best_so_far

logger = logging.getLogger(__name__)

FIGURES_DIR = "figures"
LAYER_MAP_PNG = "layer_map.png"
PARETO_PNG = "pareto_front.png"
TRACE_PNG = "search_trace.png"
ANYTIME_PNG = "anytime.png"
VALIDATION_PNG = "validation_pick.png"
ANYTIME_JSON = "anytime.json"

BASE_COLOR = "#8c8c8c"
REMOVED_COLOR = "#ffffff"
REMOVED_EDGE = "#b0b0b0"
# fine-tune colours (tab10 without its grey, which is the base's)
FINETUNE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#bcbd22", "#17becf")
FRONT_COLOR = "#d62728"
DPI = 130


# ---- layer map ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRole:
    """What became of one original layer: `kind` is removed | base | finetune | merged."""

    layer_idx: int
    kind: str
    sources: tuple[int, ...]
    position: int | None  # output slot of a kept layer
    text: str


def family_names(n_candidates: int, names: Sequence[str] | None = None) -> list[str]:
    """Base first, then one name per candidate; generic names where none are known."""
    if names and len(names) == n_candidates + 1:
        return [str(n) for n in names]
    return ["base", *(f"fine-tune {j}" for j in range(n_candidates))]


def finetune_color(j: int) -> str:
    return FINETUNE_COLORS[j % len(FINETUNE_COLORS)]


def layer_roles(genome: Genome, names: Sequence[str] | None = None) -> list[LayerRole]:
    """One role per original layer, in the words of `Genome.describe()` with family names."""
    names = family_names(genome.n_candidates, names)
    by_idx = {spec.layer_idx: (pos, spec) for pos, spec in enumerate(genome.layers)}
    roles = []
    for i, described in enumerate(genome.describe()):
        if i not in by_idx:
            roles.append(LayerRole(i, "removed", (), None, described))
            continue
        pos, spec = by_idx[i]
        if not spec.sources:
            text = "base" if names[0] == "base" else f"base ({names[0]})"
            roles.append(LayerRole(i, "base", (), pos, text))
        elif len(spec.sources) == 1:
            roles.append(LayerRole(i, "finetune", spec.sources, pos, names[spec.sources[0] + 1]))
        else:
            parts = [names[j + 1] for j in spec.sources]
            if any(w != 1.0 for w in spec.weights):
                parts = [f"{w:.3g}×{n}" for w, n in zip(spec.weights, parts)]
            text = merge_method(genome.method).describe(spec, parts)
            roles.append(LayerRole(i, "merged", spec.sources, pos, text))
    return roles


def layer_map_markdown(genome: Genome, names: Sequence[str] | None = None) -> str:
    """Markdown table: original layer, output position, where the layer comes from."""
    lines = ["| layer | position in the pruned model | taken from |", "|---|---|---|"]
    for role in layer_roles(genome, names):
        pos = "—" if role.position is None else str(role.position)
        text = "**removed**" if role.kind == "removed" else role.text
        lines.append(f"| {role.layer_idx} | {pos} | {text} |")
    return "\n".join(lines)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Write the PNG to a temp name, then rename: a killed report never leaves half an image."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


def plot_layer_map(genome: Genome, names: Sequence[str] | None, path: str | os.PathLike,
                   title: str | None = None) -> Path:
    """One row per original layer, coloured removed / base / fine-tune j / merged; PNG at `path`."""
    from matplotlib.patches import Patch, Rectangle

    names = family_names(genome.n_candidates, names)
    roles = layer_roles(genome, names)
    L = genome.n_layers
    fig = _new_figure(8.0, 1.6 + 0.34 * L)
    ax = fig.add_subplot(1, 1, 1)
    for role in roles:
        y = role.layer_idx
        if role.kind == "removed":
            ax.add_patch(Rectangle((0, y - 0.4), 1, 0.8, facecolor=REMOVED_COLOR, edgecolor=REMOVED_EDGE,
                                   hatch="xx", linestyle="--", linewidth=0.8))
        elif role.kind == "base":
            ax.add_patch(Rectangle((0, y - 0.4), 1, 0.8, facecolor=BASE_COLOR, edgecolor="black", linewidth=0.6))
        else:
            width = 1.0 / len(role.sources)
            for k, j in enumerate(role.sources):
                ax.add_patch(Rectangle((k * width, y - 0.4), width, 0.8, facecolor=finetune_color(j),
                                       edgecolor="white" if role.kind == "merged" else "black",
                                       hatch="//" if role.kind == "merged" else None, linewidth=0.6))
            ax.add_patch(Rectangle((0, y - 0.4), 1, 0.8, fill=False, edgecolor="black", linewidth=0.6))
        label = "removed" if role.kind == "removed" else f"→ {role.position}: {role.text}"
        ax.text(1.04, y, label, va="center", ha="left", fontsize=9,
                color="#777777" if role.kind == "removed" else "black",
                style="italic" if role.kind == "removed" else "normal")
    ax.set_xlim(0, 3.4)
    ax.set_ylim(L - 0.5, -0.5)  # layer 0 on top, like a model read from the embeddings down
    ax.set_yticks(range(L))
    ax.set_yticklabels([f"layer {i}" for i in range(L)], fontsize=9)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_ylabel("original layer")
    handles = [Patch(facecolor=REMOVED_COLOR, edgecolor=REMOVED_EDGE, hatch="xx", label="removed"),
               Patch(facecolor=BASE_COLOR, edgecolor="black", label=f"base: {names[0]}")]
    handles += [Patch(facecolor=finetune_color(j), edgecolor="black", label=f"fine-tune: {names[j + 1]}")
                for j in range(genome.n_candidates)]
    if genome.has_merges:
        handles.append(Patch(facecolor="#dddddd", edgecolor="white", hatch="//",
                             label=f"merged ({genome.method}; stripes = merged fine-tunes)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8.5,
              frameon=False)
    ax.set_title(title or f"Layer map: {genome.n_kept} of {L} layers kept ({len(genome.removed)} removed)",
                 fontsize=11, loc="left")
    return _save(fig, path)


# ---- search figures -------------------------------------------------------------------------
def _loss_label(trials: Sequence[Trial], task: str) -> str:
    metrics = next((t.rungs[-1].metrics.get(task, {}) for t in trials if t.rungs), {})
    kind = "1 − acc" if "acc" in metrics else "NLL/token" if "nll" in metrics else "loss"
    return f"{task}: {kind}"


def full_fidelity_trials(trials: Sequence[Trial], top: int) -> list[Trial]:
    return [t for t in trials if t.status == "ok" and t.fidelity == top]


def plot_pareto_front(trials: Sequence[Trial], top: int, path: str | os.PathLike,
                      best: Trial | None = None) -> Path:
    """Per-task search losses of the full-fidelity trials, the Pareto front highlighted.

    One task: loss vs trial; two: a scatter; more: parallel coordinates, each axis scaled to the
    range seen (its ends labelled with the real values).
    """
    from gptailor_merge.search.result import pareto_front

    pool = full_fidelity_trials(trials, top)
    front = pareto_front(trials, top)
    front_ids = {t.genome_id for t in front}
    tasks = list(pool[0].rungs[-1].losses) if pool else []
    ranges = {k: (min(t.rungs[-1].losses[k] for t in pool), max(t.rungs[-1].losses[k] for t in pool)) for k in tasks}

    def coords(t: Trial) -> tuple[list[float], list[float]]:
        loss = t.rungs[-1].losses
        if len(tasks) == 1:
            return [t.index], [loss[tasks[0]]]
        if len(tasks) == 2:
            return [loss[tasks[0]]], [loss[tasks[1]]]
        scaled = [0.5 if hi - lo < 1e-12 else (loss[k] - lo) / (hi - lo) for k, (lo, hi) in ranges.items()]
        return list(range(len(tasks))), scaled

    fig = _new_figure(7.5, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(f"Pareto front: {len(front)} of {len(pool)} full-fidelity trials ({top} examples per task)",
                 fontsize=11, loc="left")
    if not pool:
        ax.text(0.5, 0.5, "no trial reached full fidelity", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    parallel = len(tasks) > 2
    for t in pool:
        xs, ys = coords(t)
        on_front = t.genome_id in front_ids
        style = dict(color=FRONT_COLOR if on_front else "#aaaaaa", zorder=3 if on_front else 2)
        if parallel:
            ax.plot(xs, ys, linewidth=1.4 if on_front else 0.8, marker="o" if on_front else None, markersize=3.5,
                    alpha=0.8, **style)
        else:
            ax.scatter(xs, ys, s=90 if on_front else 22, **style)
    handle = ax.plot if parallel else ax.scatter
    handle([], [], color="#aaaaaa", label="dominated trial")
    handle([], [], color=FRONT_COLOR, label="Pareto front", **({"marker": "o"} if parallel else {}))
    if len(tasks) == 2:
        pts = sorted(coords(t) for t in front)
        ax.step([p[0][0] for p in pts], [p[1][0] for p in pts], where="post", color=FRONT_COLOR, alpha=0.5,
                linewidth=1)
    if best is not None and best.status == "ok" and best.fidelity == top:
        xs, ys = coords(best)
        ax.plot(xs, ys, color="black", linewidth=2.2 if parallel else 0, marker="*", markersize=14,
                markerfacecolor="gold", zorder=4, label=f"best retention ({best.genome_id})")
    if parallel:
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([_loss_label(pool, k).replace(": ", "\n") for k in tasks], fontsize=9)
        for x, (lo, hi) in enumerate(ranges.values()):
            ax.axvline(x, color="black", linewidth=0.6)
            ax.text(x, -0.06, f"{lo:.3g}", ha="center", va="top", fontsize=8)
            ax.text(x, 1.06, f"{hi:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(-0.15, 1.15)
        ax.set_yticks([0, 0.5, 1])
        ax.set_ylabel("loss, scaled per task\n(0 = best seen, 1 = worst seen)")
    else:
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel("trial" if len(tasks) == 1 else f"{_loss_label(pool, tasks[0])}  (lower is better)")
        ax.set_ylabel(f"{_loss_label(pool, tasks[-1])}  (lower is better)")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2 if parallel else -0.11), ncol=3,
              frameon=False)
    ax.grid(alpha=0.25)
    return _save(fig, path)


def plot_search_trace(trials: Sequence[Trial], top: int, path: str | os.PathLike) -> Path:
    """Retention each trial reached vs trial index (marker = fidelity), and the best so far."""
    import matplotlib
    from matplotlib.lines import Line2D

    fig = _new_figure(8.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    fidelities = sorted({t.fidelity for t in trials if t.status == "ok" and t.rungs})
    markers = ["v", "s", "D", "^", "P"]
    blues = matplotlib.colormaps["Blues"]
    for k, n in enumerate(fidelities):
        pts = [(t.index, t.retention) for t in trials if t.status == "ok" and t.fidelity == n]
        full = n == top
        shade = 1.0 if full else 0.45 + 0.3 * k / max(1, len(fidelities) - 1)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="o" if full else markers[k % len(markers)],
                   s=30 if full else 24, color=blues(shade), edgecolor="black" if full else "none",
                   linewidth=0.5, zorder=3,
                   label=f"full fidelity ({n} examples)" if full else f"stopped at {n} example{'s' * (n != 1)}")
    cached = [(t.index, t.retention) for t in trials if t.status == "cached" and t.rungs]
    if cached:
        ax.scatter([p[0] for p in cached], [p[1] for p in cached], marker="o", facecolor="none",
                   edgecolor="#888888", s=22, label="repeat proposal (cached)")
    steps = {t.index: t.retention for t in best_so_far(trials, top)}
    best_x, best_y, best = [], [], -math.inf
    for t in trials:
        best = steps.get(t.index, best)
        if math.isfinite(best):
            best_x.append(t.index)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color=FRONT_COLOR, linewidth=2, zorder=4,
                label="best full-fidelity retention so far")
    failed = [t.index for t in trials if t.status == "failed"]
    if failed:
        ax.scatter(failed, [0.02] * len(failed), transform=ax.get_xaxis_transform(), marker="x", color="black",
                   s=30, label="failed trial")
    seeded = [t.index for t in trials if t.seeded]
    if seeded:
        ax.axvspan(min(seeded) - 0.5, max(seeded) + 0.5, color="#fff3c4", zorder=0)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="#fff3c4", linewidth=8))
        labels.append("heuristic seed trials")
    else:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3,
                  frameon=False)
    ax.set_xlabel("trial")
    ax.set_ylabel("retention vs dense base (search split)")
    ax.grid(alpha=0.25)
    n_ok = sum(1 for t in trials if t.status == "ok")
    ax.set_title(f"Search trace: {len(trials)} trials, {n_ok} evaluated, "
                 f"{sum(1 for t in trials if t.status == 'ok' and t.fidelity == top)} at full fidelity",
                 fontsize=11, loc="left")
    return _save(fig, path)


def plot_anytime(data: dict, path: str | os.PathLike) -> Path:
    """Held-out retention_sym of the best-so-far recipe against the search's own time, each
    baseline a marker at its own compute time: what more search time buys."""
    fig = _new_figure(8.0, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    points = data.get("points", [])
    if points:
        xs = [p["seconds"] for p in points] + [data.get("trial_seconds", points[-1]["seconds"])]
        ys = [p["retention_sym"] for p in points] + [points[-1]["retention_sym"]]
        ax.step(xs, ys, where="post", color=FRONT_COLOR, linewidth=2, label="search: best so far (held-out)")
        for p in points:
            ax.scatter([p["seconds"]], [p["retention_sym"]], s=28, zorder=3,
                       color="#f2b600" if p["origin"] == "seed" else FRONT_COLOR, edgecolor="black",
                       linewidth=0.5)
            ax.annotate(f"#{p['trial']}", (p["seconds"], p["retention_sym"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
    for b in data.get("baselines", []):
        ax.scatter([max(b["seconds"] or 0.0, 1e-2)], [b["retention_sym"]], marker="D", s=30, color="#777777",
                   zorder=3)
        ax.annotate(b["method"], (max(b["seconds"] or 0.0, 1e-2), b["retention_sym"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points", color="#444444")
    ax.set_xscale("log")
    ax.set_xlabel("compute seconds (search: its trials' own time; baselines: calibration + selection)")
    ax.set_ylabel("retention_sym vs dense base (held-out)")
    ax.grid(alpha=0.25)
    ax.set_title(f"Anytime: {data.get('trials', '?')} trials; yellow = a seed was the best so far",
                 fontsize=11, loc="left")
    if points:
        ax.legend(fontsize=8.5, loc="lower right", frameon=False)
    return _save(fig, path)


def plot_validation_pick(selection: dict, path: str | os.PathLike) -> Path:
    """Each contender of the validation pick at its search objective on the search split (x) and the
    same objective on validation (y): how far the search's reads fall on fresh examples (the
    winner's curse), and which contender was returned."""
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    contenders = [c for c in selection.get("contenders", [])
                  if c.get("search_retention") is not None and c.get("validation_objective") is not None]
    winner = selection.get("winner", {}).get("genome_id")
    for c in contenders:
        seed = c.get("kind") in ("seed", "search seed")
        ax.scatter([c["search_retention"]], [c["validation_objective"]], s=70 if c["genome_id"] == winner else 34,
                   marker="D" if seed else "o", color="#777777" if seed else FRONT_COLOR, zorder=3,
                   edgecolor="black", linewidth=1.6 if c["genome_id"] == winner else 0.5)
        ax.annotate(c["name"] + (" (returned)" if c["genome_id"] == winner else ""),
                    (c["search_retention"], c["validation_objective"]), fontsize=7.5, xytext=(4, 3),
                    textcoords="offset points")
    if contenders:
        values = [v for c in contenders for v in (c["search_retention"], c["validation_objective"])]
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#bbbbbb", linewidth=1, linestyle="--",
                zorder=1, label="validation = search")
        ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.set_xlabel("search objective on the search split (as raced)")
    ax.set_ylabel("search objective on the validation split")
    ax.grid(alpha=0.25)
    diff = selection.get("best_finalist_vs_best_seed")
    gap = "" if not diff else f";\nbest finalist vs best seed on validation retention_sym {diff['diff']:+.3f} [{diff['ci95'][0]:+.3f}, " \
                               f"{diff['ci95'][1]:+.3f}]"
    ax.set_title(f"Validation pick: circles finalists, diamonds seeds{gap}", fontsize=9.5, loc="left")
    return _save(fig, path)


# ---- report.md ------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What a run folder holds, read once (no models)."""

    run_dir: Path
    trials: list[Trial]
    best_genome: Genome | None
    best_trial: Trial | None
    names: list[str]
    top: int
    summary: dict | None

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunRecord:
        from gptailor_merge.materialize.recipe import Recipe, recipe_to_genome

        run_dir = Path(run_dir)
        if not (run_dir / "journal.jsonl").is_file():
            raise ConfigError(
                f"'{run_dir}' is not a run folder (no journal.jsonl); pass the folder `optimize` printed"
            )
        trials = Journal(run_dir / "journal.jsonl").load()
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else None
        rungs = (summary or {}).get("search", {}).get("rungs")
        top = int(rungs[-1]) if rungs else max((t.fidelity for t in trials if t.status == "ok"), default=0)
        pool = full_fidelity_trials(trials, top)
        best_trial = min(pool, key=lambda t: t.loss) if pool else None
        best_genome, meta_names = None, None
        if (run_dir / "best.yaml").is_file():
            recipe = Recipe.load(run_dir / "best.yaml")
            best_genome = recipe_to_genome(recipe)
            meta_names = recipe.family_refs().names
            best_trial = next((t for t in pool if t.genome_id == best_genome.genome_id), best_trial)
        elif best_trial is not None:
            best_genome = Genome.from_dict(dict(best_trial.genome))
        names = (summary or {}).get("family", {}).get("names") or meta_names
        n_cands = best_genome.n_candidates if best_genome else (trials[0].genome["n_candidates"] if trials else 0)
        return cls(run_dir, trials, best_genome, best_trial, family_names(n_cands, names), top, summary)


def _demote_headings(markdown: str) -> str:
    return "\n".join("##" + line if line.startswith("# ") else line for line in markdown.splitlines())


def _pareto_table(record: RunRecord) -> list[str]:
    from gptailor_merge.search.result import pareto_front

    front = sorted(pareto_front(record.trials, record.top), key=lambda t: t.loss)
    if not front:
        return ["No trial reached full fidelity."]
    tasks = list(front[0].rungs[-1].losses)
    lines = ["| recipe | trial | " + " | ".join(f"{k} loss" for k in tasks) + " | search retention |",
             "|" + "---|" * (len(tasks) + 3)]
    for t in front:
        recipe = f"pareto/{t.genome_id}.yaml"
        if not (record.run_dir / recipe).is_file():
            recipe = t.genome_id
        lines.append(f"| `{recipe}` | {t.index} | " + " | ".join(f"{t.rungs[-1].losses[k]:.4f}" for k in tasks)
                     + f" | {t.retention:.4f} |")
    return lines


def _selection_section(selection: dict | None, figures: Path) -> list[str]:
    """The finalists and baseline seeds as scored on validation, and which one the run returned."""
    if not selection:
        return []
    n = selection.get("validation_examples")
    plot_validation_pick(selection, figures / VALIDATION_PNG)
    lines = ["## Winner chosen on validation", "", selection["message"] + ".", "",
             f"![validation pick]({FIGURES_DIR}/{VALIDATION_PNG})", "",
             f"Validation split, {'all' if n is None else n} examples per task; the objective is the "
             "search's (exp of the mean log ratio against the dense base), `retention_sym` the reported "
             "yardstick.", "",
             "| contender | kind | origin | search retention | validation objective | validation retention_sym |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    winner = selection["winner"]["genome_id"]
    for c in selection["contenders"]:
        mark = " **(returned)**" if c["genome_id"] == winner else ""
        lines.append(f"| {c['name']}{mark} | {c['kind']} | {c['origin']} | {fmt(c['search_retention'])} | "
                     f"{fmt(c['validation_objective'])} | {fmt(c['validation_retention_sym'])} |")
    return [*lines, ""]


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write `run_dir/report.md` and its figures under `run_dir/figures/`; returns report.md."""
    record = RunRecord.load(run_dir)
    run_dir = record.run_dir
    figures = run_dir / FIGURES_DIR
    trials = record.trials
    lines = [f"# gptailor-merge report: `{run_dir.name}`", ""]
    n_ok = sum(1 for t in trials if t.status == "ok")
    n_failed = sum(1 for t in trials if t.status == "failed")
    n_full = len(full_fidelity_trials(trials, record.top))
    names = record.names
    if record.best_genome is not None:
        g = record.best_genome
        lines += [f"Family: base **{names[0]}** and {g.n_candidates} fine-tunes ({', '.join(names[1:])}); "
                  f"the best recipe keeps **{g.n_kept} of {g.n_layers} layers**.", ""]
    lines += [f"Search: {len(trials)} trials ({n_ok} evaluated, {n_failed} failed), {n_full} reached full fidelity "
              f"({record.top} examples per task).", ""]
    if record.best_genome is not None:
        plot_layer_map(record.best_genome, names, figures / LAYER_MAP_PNG)
        best_line = (f"Search retention {record.best_trial.retention:.4f} (trial {record.best_trial.index}). "
                     if record.best_trial else "")
        lines += ["## Best recipe: layer map", "",
                  f"Recipe: `best.yaml` (genome `{record.best_genome.genome_id}`). {best_line}"
                  "Run it with `mergekit-yaml best.yaml out/`.", "",
                  f"![layer map]({FIGURES_DIR}/{LAYER_MAP_PNG})", "",
                  layer_map_markdown(record.best_genome, names), ""]
    lines += _selection_section((record.summary or {}).get("selection"), figures)
    plot_pareto_front(trials, record.top, figures / PARETO_PNG, best=record.best_trial)
    lines += ["## Pareto front (search split)", "",
              "Per-task search losses of the trials that reached full fidelity; a trial is on the front when no "
              "other trial is at least as good on every task and better on one.", "",
              f"![Pareto front]({FIGURES_DIR}/{PARETO_PNG})", "", *_pareto_table(record), ""]
    plot_search_trace(trials, record.top, figures / TRACE_PNG)
    lines += ["## Search trace", "",
              "Each marker is a trial at the largest example budget it reached (successive halving stops weak "
              "trials early); the line is the best full-fidelity retention so far.", "",
              f"![search trace]({FIGURES_DIR}/{TRACE_PNG})", ""]
    if (run_dir / ANYTIME_JSON).is_file():  # written by benchmarks/quality.py, which scores it
        plot_anytime(json.loads((run_dir / ANYTIME_JSON).read_text()), figures / ANYTIME_PNG)
        lines += ["## Anytime", "",
                  "Held-out retention of the best recipe so far against the search's own compute time, with "
                  "the single-model baselines at their compute time.", "",
                  f"![anytime]({FIGURES_DIR}/{ANYTIME_PNG})", ""]
    summary_md = run_dir / "summary.md"
    if summary_md.is_file():
        lines += ["## Held-out results", "", _demote_headings(summary_md.read_text()).strip(), ""]
    else:
        lines += ["## Held-out results", "", "No summary.md yet (the run has not finished).", ""]
    out = run_dir / "report.md"
    write_text_atomic(out, "\n".join(lines))
    logger.info("wrote %s and %d figures in %s", out, len(list(figures.glob("*.png"))), figures)
    return out
