"""End to end on the embedded demo family: the tiny preset (seconds) for what any demo family
shows, the default one (integration: built once per run, cached under $GPTAILOR_CACHE) for the
recipes in merge_recipes/ that are written for its 12 layers."""


import pytest
import torch
from conftest import yardstick_from_metrics


def test_demo_family_stitch_equals_mergekit_for_a_merged_recipe(tiny_demo_family, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from gptailor_merge.core.genome import Genome
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
    from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
    from gptailor_merge.materialize.stitch import Stitcher

    family = Family.load(tiny_demo_family.base, tiny_demo_family.candidates)
    L, K = family.n_layers, family.n_candidates
    assert (L, K) == (4, 3)
    removed = [2]
    sources = [(0, 2), (1,), (0,), ()]  # kept: a merge, a fine-tune's layer, the base's
    genome = Genome.from_choices(L, K, removed, sources, lams=[0.6] * L)
    passthrough = Genome.from_choices(L, K, removed, [(i % K,) for i in range(L)])
    vocab = AutoConfig.from_pretrained(family.base.path).vocab_size
    x = torch.randint(3, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    stitcher = Stitcher(family)
    for g in (genome, passthrough):
        out = materialize_with_mergekit(genome_to_recipe(g, FamilyRefs.of(family)), tmp_path / g.genome_id)
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        stitched = stitcher.build(g)
        if not g.has_merges:
            a, b = merged.state_dict(), stitched.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a)
        with torch.inference_mode():
            assert (merged(x).logits - stitched(x).logits).abs().max().item() <= 1e-5


def test_optimize_on_the_demo_family_reports_heldout_retention(tiny_demo_family, tmp_path, monkeypatch):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    config = RunConfig.from_dict({"family": {"demo_preset": "tiny"}, "search": {"n_trials": 10, "max_examples": 27},
                                  "out_dir": str(tmp_path / "run")})
    outcome = optimize(config, progress=False)
    summary = outcome.summary
    assert summary["n_layers"] == 4 and summary["target_layers"] == 3  # the default remove_fraction 0.25
    assert summary["mergekit_vs_stitch_max_abs_diff"] <= 1e-4
    rows = {r["model"]: r for r in summary["rows"]}
    assert {"base", "prose", "code", "math", "gptailor-best"} <= set(rows)
    demo_tasks = {*tiny_demo_family.task_names, *(f"ppl_{d}" for d in tiny_demo_family.domains)}
    assert all(set(r["tasks"]) == demo_tasks for r in summary["rows"])
    assert rows["gptailor-best"]["layers"] == 3 and rows["base"]["layers"] == 4
    # members are the real fine-tunes from their folders: each scores its own perplexities
    assert rows["math"]["kind"] == "member" and rows["math"]["log_ratios"]["ppl_math"] > 0
    assert rows["prose"]["log_ratios"]["ppl_math"] < 0
    best = rows["gptailor-best"]
    for row in summary["rows"]:  # every row's retention_sym, recomputed from its own metrics
        assert row["retention_sym"] == pytest.approx(
            yardstick_from_metrics(row, rows["base"], summary["counted_tasks"]), rel=1e-4), row["model"]
    lo, hi = best["vs_best_member"]["ci95"]
    assert lo <= best["vs_best_member"]["diff"] <= hi
    assert sum(summary["search"]["origins"].values()) == summary["search"]["trials"] == 10
    assert (outcome.run_dir / "report.md").is_file()


@pytest.mark.integration


@pytest.mark.parametrize("name", ["demo-passthrough", "demo-ties"])
def test_demo_recipes_in_merge_recipes_run_with_mergekit_and_equal_the_stitcher(default_demo_family, name, tmp_path,
                                                                                monkeypatch):
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
    from gptailor_merge.materialize.recipe import Recipe, recipe_to_genome
    from gptailor_merge.materialize.stitch import Stitcher

    recipe = Recipe.load(Path(__file__).resolve().parents[1] / "merge_recipes" / f"{name}.yaml")
    monkeypatch.chdir(default_demo_family.root)  # the recipes name the members relative to the family folder
    family = Family.load(default_demo_family.base, default_demo_family.candidates)
    genome = recipe_to_genome(recipe)
    assert len(genome.layers) == 9
    merged = AutoModelForCausalLM.from_pretrained(materialize_with_mergekit(recipe, tmp_path / "out")).eval()
    x = torch.randint(3, 1000, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (merged(x).logits - Stitcher(family).build(genome)(x).logits).abs().max().item()
    assert diff <= 1e-5
