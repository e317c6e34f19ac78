"""Report: report.md and its three figures from a tiny run; layer-map rows; every Pareto layout."""

import random

import pytest

from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.search.journal import RungResult, Trial
from gptailor_merge.share.report import (
    LAYER_MAP_PNG,
    PARETO_PNG,
    TRACE_PNG,
    VALIDATION_PNG,
    layer_map_markdown,
    layer_roles,
    plot_layer_map,
    plot_pareto_front,
    plot_search_trace,
    plot_validation_pick,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return path.read_bytes()[:8] == PNG_MAGIC and image.size[0] > 400 and image.size[1] > 200


def test_write_report_writes_markdown_that_embeds_four_figures_and_the_summary_table(tiny_run):
    out = write_report(tiny_run)
    assert out == tiny_run / "report.md"
    text = out.read_text()
    for png in (LAYER_MAP_PNG, PARETO_PNG, TRACE_PNG, VALIDATION_PNG):
        assert f"](figures/{png})" in text
        assert _is_png(tiny_run / "figures" / png), png
    summary_table = next(line for line in (tiny_run / "summary.md").read_text().splitlines()
                         if line.startswith("| gptailor-best"))
    assert summary_table in text
    assert "| layer | position in the pruned model | taken from |" in text
    assert "pareto/" in text  # the front's recipes are named
    # the validation pick: every finalist and seed, the returned one marked
    assert "## Winner chosen on validation" in text and "**(returned)**" in text
    assert "| best-baseline (" in text
    assert not list(tiny_run.rglob("*.tmp"))


def test_report_command_prints_where_the_report_is(tiny_run, capsys):
    from gptailor_merge.cli.app import main

    assert main(["-q", "report", str(tiny_run)]) == 0
    assert "report.md" in capsys.readouterr().out


def test_a_folder_that_is_not_a_run_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder.*optimize"):
        write_report(tmp_path)


GENOME = Genome(6, 3, (LayerSpec(0), LayerSpec(1, (2,)), LayerSpec(3, (0, 1), lam=0.7),
                       LayerSpec(5, (0, 2), lam=0.5, weights=(1.0, 0.5))))
NAMES = ["llama", "chat", "math", "code"]


def test_layer_roles_name_every_original_layer_in_the_words_of_describe():
    roles = layer_roles(GENOME, NAMES)
    assert [r.kind for r in roles] == ["base", "finetune", "removed", "merged", "removed", "merged"]
    assert [r.position for r in roles] == [0, 1, None, 2, None, 3]
    assert [r.kind == "removed" for r in roles] == [d == "removed" for d in GENOME.describe()]
    assert roles[1].text == "code"
    assert roles[3].text == "task_arithmetic: chat + math (λ=0.7)"
    assert roles[5].text == "task_arithmetic: 1×chat + 0.5×code (λ=0.5)"
    table = layer_map_markdown(GENOME, NAMES)
    assert "| 2 | — | **removed** |" in table and "| 0 | 0 | base (llama) |" in table


def test_layer_map_without_names_uses_generic_names_and_writes_a_png(tmp_path):
    path = plot_layer_map(GENOME, None, tmp_path / "map.png")
    assert _is_png(path)
    assert layer_roles(GENOME)[1].text == "fine-tune 2"


def _trial(index, losses, n=9, status="ok", seeded=False):
    metrics = {k: ({"acc": 1 - v} if k.startswith("mc") else {"nll": v}) for k, v in losses.items()}
    rung = RungResult(n, metrics, dict(losses), 1.0 - sum(losses.values()) / 10, 0.1)
    return Trial(index, GENOME.to_dict(), f"g{index:011d}", (rung,), 1 - rung.retention, 0.1, status=status,
                 seeded=seeded)


@pytest.mark.parametrize("tasks", [["mc"], ["mc", "txt"], ["mc", "txt", "mc2", "mc3"]])
def test_pareto_and_trace_plots_handle_any_number_of_tasks(tmp_path, tasks):
    rng = random.Random(len(tasks))
    trials = [_trial(i, {k: rng.random() for k in tasks}, n=9 if i % 3 else 3, seeded=i < 3) for i in range(12)]
    trials.append(_trial(12, {}, status="failed"))
    trials[5] = Trial(5, trials[4].genome, trials[4].genome_id, trials[4].rungs, trials[4].loss, 0.0, status="cached")
    assert _is_png(plot_pareto_front(trials, 9, tmp_path / "front.png", best=trials[1]))
    assert _is_png(plot_search_trace(trials, 9, tmp_path / "trace.png"))


def test_pareto_plot_without_full_fidelity_trials_says_so(tmp_path):
    assert _is_png(plot_pareto_front([_trial(0, {"mc": 0.5}, n=3)], 9, tmp_path / "empty.png"))


def test_validation_pick_plot_takes_a_returned_seed_and_contenders_without_scores(tmp_path):
    seed = {"genome_id": "s", "kind": "seed", "name": "greedy_ppl", "origin": "seed", "search_retention": 0.9,
            "validation_objective": 0.93}
    selection = {"contenders": [seed, {"genome_id": "f", "kind": "finalist", "name": "trial 7", "origin": "optimizer",
                                       "search_retention": 0.97, "validation_objective": 0.92},
                                {"genome_id": "x", "kind": "finalist", "name": "trial 9", "origin": "local",
                                 "search_retention": None, "validation_objective": None}],
                 "winner": seed, "best_finalist_vs_best_seed": {"diff": -0.01, "ci95": [-0.05, 0.03]}}
    assert _is_png(plot_validation_pick(selection, tmp_path / "pick.png"))
    assert _is_png(plot_validation_pick({"contenders": [], "winner": {}}, tmp_path / "none.png"))
