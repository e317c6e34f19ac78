"""The merge-method registry: one entry per method, laid out as mergekit declares it, usable in
search, recipes, the stitcher and `materialize` (stitcher = mergekit: tests/test_stitch.py)."""

import pytest
import torch
from conftest import write_word_tasks  # noqa: E402
from mergekit import merge_methods as mergekit_methods
from transformers import AutoModelForCausalLM

from gptailor_merge.cli.app import main
from gptailor_merge.core.config import RunConfig
from gptailor_merge.core.errors import ConfigError, GenomeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.core.merge_methods import MERGE_METHODS, _register, merge_method
from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
from gptailor_merge.materialize.stitch import Stitcher
from gptailor_merge.search.space import SearchSpace

REFS = FamilyRefs("/m/base", ("/m/chat", "/m/math", "/m/code"), 8)
SPEC = LayerSpec(2, (0, 2), lam=0.7, density=0.4, weights=(0.5, 1.5))


def test_four_methods_and_each_is_a_mergekit_method():
    assert {"task_arithmetic", "ties", "linear", "breadcrumbs_ties"} <= set(MERGE_METHODS.names())
    for name in MERGE_METHODS:
        declared = {p.name for p in mergekit_methods.get(name).spec.parameters}
        assert set(merge_method(name).parameters(SPEC, 3).merge_tensors_parameters(False)) <= declared


def test_parameters_go_where_mergekit_declares_them():
    ties = merge_method("ties").parameters(SPEC, 3)
    assert ties.shared == {"lambda": 0.7}
    assert ties.per_source == ({}, {"weight": 0.5, "density": 0.4}, {"weight": 0.0, "density": 1.0},
                               {"weight": 1.5, "density": 0.4})
    linear = merge_method("linear").parameters(SPEC, 3)  # mergekit ignores the base: it is an input
    assert merge_method("linear").base_is_input and not merge_method("ties").base_is_input
    assert linear.shared == {} and [p["weight"] for p in linear.per_source] == [0.0, 0.5, 0.0, 1.5]
    assert linear.merge_tensors_parameters(True) == {"weight": [0.0, 0.5, 0.0, 1.5]}
    crumbs = merge_method("breadcrumbs_ties").parameters(SPEC, 3)
    assert [p.get("gamma") for p in crumbs.per_source] == [None, 0.01, 0.01, 0.01]
    assert crumbs.merge_tensors_parameters(False)["density"] == [0.4, 1.0, 0.4]
    boundary = merge_method("task_arithmetic").parameters(None, 3)  # takes everything from the base
    assert boundary.shared == {"lambda": 1.0} and all(p.get("weight", 0.0) == 0.0 for p in boundary.per_source)


def test_recipe_slices_carry_the_registry_parameters():
    genome = Genome(8, 3, (SPEC, LayerSpec(5)), method="breadcrumbs_ties")
    merged = genome_to_recipe(genome, REFS).data["slices"][1]  # [0, 0] pins the embeddings first
    assert merged["sources"][0]["layer_range"] == [2, 3]
    params = merge_method("breadcrumbs_ties").parameters(SPEC, 3)
    assert merged["parameters"] == params.shared
    assert [s.get("parameters", {}) for s in merged["sources"]] == list(params.per_source)


def test_unknown_method_says_did_you_mean_and_unused_parameters_are_canonical():
    with pytest.raises(KeyError, match="Did you mean 'ties'"):
        merge_method("tis")
    with pytest.raises(GenomeError, match="Did you mean 'breadcrumbs_ties'"):
        Genome(4, 2, (LayerSpec(0, (0, 1)),), method="breadcrumb_ties")
    with pytest.raises(ConfigError, match="Did you mean 'linear'"):
        RunConfig.from_dict({"search": {"merge_methods": ["liner"]}})
    # linear reads no lambda or density, task arithmetic no density: they cannot tell genomes apart
    a = Genome(4, 2, (LayerSpec(0, (0, 1), lam=0.5, density=0.3),), method="linear")
    assert a == Genome(4, 2, (LayerSpec(0, (0, 1)),), method="linear")
    b = Genome(4, 2, (LayerSpec(0, (0, 1), lam=0.5, density=0.3),), method="breadcrumbs_ties")
    assert b.layers[0].density == 0.3 and b.layers[0].lam == 0.5


def test_an_entry_mergekit_does_not_define_fails_at_registration():
    with pytest.raises(ValueError, match="no merge method 'tiez'"):
        _register("tiez", ("lam",), ("lam",))
    with pytest.raises(ValueError, match=r"does not declare \['lambda'\]"):
        _register("linear", ("lam", "weights"), ())
    assert "tiez" not in MERGE_METHODS


def test_search_space_varies_what_the_methods_search():
    assert SearchSpace(6, 3, 4, methods=("linear",)).searched == ()
    assert SearchSpace(6, 3, 4, methods=("task_arithmetic",)).searched == ("lam",)
    space = SearchSpace(6, 3, 4, methods=("task_arithmetic", "breadcrumbs_ties"))
    assert space.searched == ("lam", "density")
    param = space.parametrization(seed=0)
    assert {"lam", "density", "method"} <= set(param.value)
    genome = Genome(6, 3, (LayerSpec(0), LayerSpec(2, (0, 1), lam=0.8, density=0.5), LayerSpec(3, (2,)),
                           LayerSpec(5)), method="breadcrumbs_ties")
    assert space.decode(space.encode(genome)) == genome


def test_breadcrumbs_is_not_ties_and_materializes_with_both_backends(llama_family, tmp_path):
    layers = (LayerSpec(0), LayerSpec(1, (0, 1, 2), lam=1.0, density=0.6), LayerSpec(3))
    crumbs, ties = (Genome(4, 3, layers, method=m) for m in ("breadcrumbs_ties", "ties"))
    x = torch.randint(3, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    stitcher = Stitcher(llama_family)
    with torch.inference_mode():
        ties_logits = stitcher.build(ties)(x).logits.clone()
        assert not torch.allclose(stitcher.build(crumbs)(x).logits, ties_logits)  # gamma drops outliers
    recipe = genome_to_recipe(crumbs, FamilyRefs.of(llama_family)).save(tmp_path / "r.yaml")
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "mk")]) == 0
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "st"), "--backend", "stitch"]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "mk").eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "st").eval()
    with torch.inference_mode():
        assert (a(x).logits - b(x).logits).abs().max().item() <= 1e-5


def test_a_short_search_over_breadcrumbs_ties_runs(tmp_path):
    from gptailor_merge.demo.synthetic import make_synthetic_family
    from gptailor_merge.materialize.recipe import Recipe, recipe_to_genome
    from gptailor_merge.run.optimize import optimize

    base, cands = make_synthetic_family(tmp_path / "fam", n_layers=4, seed=5)
    write_word_tasks(tmp_path)
    config = RunConfig.from_dict({
        "family": {"base": str(base), "candidates": [str(c) for c in cands]},
        "target": {"layers": 3},
        "tasks": [str(tmp_path / "mc.jsonl"), str(tmp_path / "txt.jsonl")],
        "search": {"n_trials": 6, "max_examples": 6, "merge_methods": ["breadcrumbs_ties"]},
        "eval": {"batch_size": 8, "max_length": 32, "heldout_examples": 6},
        "out_dir": str(tmp_path / "run"),
    })
    outcome = optimize(config, progress=False)
    genomes = [recipe_to_genome(Recipe.load(p)) for p in (outcome.run_dir / "pareto").glob("*.yaml")]
    assert genomes and all(g.method == "breadcrumbs_ties" and g.n_kept == 3 for g in genomes)
    assert outcome.summary["mergekit_vs_stitch_max_abs_diff"] <= 1e-4
