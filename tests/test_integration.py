"""End to end on the embedded demo family (built once per run and cached under $GPTAILOR_CACHE)."""

import math

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def demo_family():
    from gptailor_merge.demo import build_demo_family

    return build_demo_family(progress=False)


def test_demo_family_stitch_equals_mergekit_for_a_merged_recipe(demo_family, tmp_path):
    from transformers import AutoModelForCausalLM

    from gptailor_merge.family import Family
    from gptailor_merge.genome import Genome
    from gptailor_merge.materialize import materialize_with_mergekit
    from gptailor_merge.recipe import FamilyRefs, genome_to_recipe
    from gptailor_merge.stitch import Stitcher

    family = Family.load(demo_family.base, demo_family.candidates)
    L, K = family.n_layers, family.n_candidates
    removed = [L - 4, L - 3, L - 2]
    sources = [(i % K,) if i % 3 == 0 else (0, 2) if i % 3 == 1 else () for i in range(L)]
    genome = Genome.from_choices(L, K, removed, sources, lams=[0.6] * L)
    passthrough = Genome.from_choices(L, K, removed, [(i % K,) for i in range(L)])
    x = torch.randint(3, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
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


def test_optimize_on_the_demo_family_reports_heldout_retention(demo_family, tmp_path):
    from gptailor_merge.config import RunConfig
    from gptailor_merge.optimize import optimize

    config = RunConfig.from_dict({"search": {"n_trials": 10, "max_examples": 27}, "out_dir": str(tmp_path / "run")})
    outcome = optimize(config, progress=False)
    summary = outcome.summary
    assert summary["target_layers"] == summary["n_layers"] - round(summary["n_layers"] * 0.25)
    assert summary["mergekit_vs_stitch_max_abs_diff"] <= 1e-4
    rows = {r["model"]: r for r in summary["rows"]}
    assert {"base", "prose", "code", "math", "gptailor-best"} <= set(rows)
    # members are the real fine-tunes from their folders: each scores its own perplexities
    assert rows["math"]["kind"] == "member" and rows["math"]["log_ratios"]["ppl_math"] > 0
    assert rows["prose"]["log_ratios"]["ppl_math"] < 0
    best = rows["gptailor-best"]
    ratios = [best["log_ratios"][t] for t in best["counted_tasks"]]
    assert best["retention_sym"] == pytest.approx(math.exp(sum(ratios) / len(ratios)), rel=1e-5)
    lo, hi = best["vs_best_member"]["ci95"]
    assert lo <= best["vs_best_member"]["diff"] <= hi
    assert sum(summary["search"]["origins"].values()) == summary["search"]["trials"] == 10
    assert (outcome.run_dir / "report.md").is_file()


@pytest.mark.parametrize("name", ["demo-passthrough", "demo-ties"])
def test_demo_recipes_in_merge_recipes_run_with_mergekit_and_equal_the_stitcher(demo_family, name, tmp_path,
                                                                                monkeypatch):
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from gptailor_merge.family import Family
    from gptailor_merge.materialize import materialize_with_mergekit
    from gptailor_merge.recipe import Recipe, recipe_to_genome
    from gptailor_merge.stitch import Stitcher

    recipe = Recipe.load(Path(__file__).resolve().parents[1] / "merge_recipes" / f"{name}.yaml")
    monkeypatch.chdir(demo_family.root)  # the recipes name the members relative to the family folder
    family = Family.load(demo_family.base, demo_family.candidates)
    genome = recipe_to_genome(recipe)
    assert len(genome.layers) == 9
    merged = AutoModelForCausalLM.from_pretrained(materialize_with_mergekit(recipe, tmp_path / "out")).eval()
    x = torch.randint(3, 1000, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (merged(x).logits - Stitcher(family).build(genome)(x).logits).abs().max().item()
    assert diff <= 1e-5
