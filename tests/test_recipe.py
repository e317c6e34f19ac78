import random
from pathlib import Path

import pytest

from gptailor_merge.core.errors import RecipeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.materialize.recipe import FamilyRefs, Recipe, genome_to_recipe, recipe_to_genome

REFS = FamilyRefs("/m/base", ("/m/chat", "/m/math", "/m/code"), 8)
REPO = Path(__file__).resolve().parents[1]


def random_genome(rng: random.Random, n_layers=8, k=3, method=None) -> Genome:
    n_keep = rng.randint(1, n_layers)
    kept = sorted(rng.sample(range(n_layers), n_keep))
    method = method or rng.choice(["task_arithmetic", "ties", "linear"])
    layers = []
    for i in kept:
        size = rng.choice([0, 1, 1, 2, 3])
        sources = tuple(sorted(rng.sample(range(k), size)))
        layers.append(LayerSpec(i, sources, lam=round(rng.uniform(0.1, 1.5), 3),
                                density=round(rng.uniform(0.2, 1.0), 3)))
    return Genome(n_layers, k, tuple(layers), method=method)


@pytest.mark.parametrize("seed", range(40))
def test_recipe_roundtrip_preserves_genome(seed):
    genome = random_genome(random.Random(seed))
    recipe = genome_to_recipe(genome, REFS)
    back = recipe_to_genome(Recipe.from_text(recipe.text))
    if genome.has_merges:
        assert back == genome
    else:  # passthrough recipes carry the method in metadata only
        assert back.layers == genome.layers and back.method == genome.method


def test_selection_only_genome_is_a_passthrough_recipe_with_merged_runs():
    g = Genome(8, 3, tuple(LayerSpec(i, (1,) if i in (2, 3) else ()) for i in (0, 1, 2, 3, 5, 6)))
    data = genome_to_recipe(g, REFS).data
    assert data["merge_method"] == "passthrough"
    ranges = [(s["sources"][0]["model"], s["sources"][0]["layer_range"]) for s in data["slices"]]
    assert ranges == [("/m/base", [0, 2]), ("/m/math", [2, 4]), ("/m/base", [5, 7])]


def test_merge_recipe_lists_the_same_sources_in_every_slice():
    g = Genome(8, 3, (LayerSpec(0, (0, 2), lam=0.6), LayerSpec(3, (1,)), LayerSpec(7, (0, 1), lam=0.8)))
    data = genome_to_recipe(g, REFS).data
    assert data["merge_method"] == "task_arithmetic" and data["base_model"] == "/m/base"
    models = {tuple(src["model"] for src in s["sources"]) for s in data["slices"]}
    assert models == {("/m/base", "/m/chat", "/m/math", "/m/code")}
    # first and last real slices merge candidates, so zero-length base slices pin embed/head
    assert data["slices"][0]["sources"][0]["layer_range"] == [0, 0]
    assert data["slices"][-1]["sources"][0]["layer_range"] == [8, 8]
    assert all(src.get("parameters", {}).get("weight", 0.0) == 0.0 for src in data["slices"][0]["sources"])


def test_recipe_validates_with_mergekits_config_model_and_keeps_metadata():
    g = Genome(8, 3, (LayerSpec(1, (0, 1), lam=0.5), LayerSpec(4)), method="ties")
    recipe = genome_to_recipe(g, REFS, metadata={"scores": {"acc": 0.5}})
    config = recipe.merge_config()
    assert config.merge_method == "ties"
    meta = Recipe.from_text(recipe.text).metadata
    assert meta["genome_id"] == g.genome_id and meta["scores"] == {"acc": 0.5}
    assert meta["n_layers"] == 8 and meta["removed"] == [0, 2, 3, 5, 6, 7]


def test_malformed_yaml_is_a_recipe_error():
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_text("slices: [unclosed", source="bad.yaml")
    with pytest.raises(RecipeError, match="needs `merge_method:` and `slices:`"):
        Recipe.from_text("base_model: x\n")
    with pytest.raises(RecipeError, match="not a valid mergekit config"):
        Recipe.from_text("merge_method: passthrough\nslices: [{sources: [{model: x}]}]\n")


def test_layer_range_out_of_range_names_the_slice():
    text = "merge_method: passthrough\nbase_model: /m/base\nslices:\n- sources: [{model: /m/base, layer_range: [6, 10]}]\n"
    with pytest.raises(RecipeError, match=r"slice 0: layer_range \[6, 10\] is outside the family's 8 layers"):
        recipe_to_genome(Recipe.from_text(text), REFS)


def test_unknown_model_and_reordered_slices_are_rejected():
    text = "merge_method: passthrough\nbase_model: /m/base\nslices:\n- sources: [{model: /m/other, layer_range: [0, 2]}]\n"
    with pytest.raises(RecipeError, match="not in the family"):
        recipe_to_genome(Recipe.from_text(text), REFS)
    text = ("merge_method: passthrough\nbase_model: /m/base\nslices:\n"
            "- sources: [{model: /m/base, layer_range: [4, 6]}]\n- sources: [{model: /m/base, layer_range: [0, 2]}]\n")
    with pytest.raises(RecipeError, match="strictly increasing"):
        recipe_to_genome(Recipe.from_text(text), REFS)


def test_recipe_save_is_atomic_and_reloads(tmp_path):
    g = Genome.base_only(8, 3, removed=[1, 2])
    path = genome_to_recipe(g, REFS).save(tmp_path / "r.yaml")
    assert not list(tmp_path.glob("*.tmp"))
    assert recipe_to_genome(Recipe.load(path)).kept == g.kept


@pytest.mark.parametrize("index", [1, 2, 3])
def test_paper_recipes_validate_and_keep_30_of_40_layers(index):
    import json

    from gptailor_merge.materialize.paper import (
        LLAMA2_13B_FAMILY,
        paper_config_to_genome,
        paper_recipe,
    )

    recipe = Recipe.load(REPO / "merge_recipes" / f"llama2-13b-gptailor-paper-{index}.yaml")
    config = recipe.merge_config()
    assert sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in config.slices) == 30
    assert config.base_model.model.path == "meta-llama/Llama-2-13b-hf"
    genome = recipe_to_genome(recipe)
    source = REPO.parent / "shared/reference/auto-merge-llm/search_config/prune/13b" / f"{index}.json"
    if source.is_file():  # the committed file is what the converter makes of the published data
        published = json.loads(source.read_text())
        assert genome == paper_config_to_genome(published, 40, 3)
        assert sorted(genome.removed) == sorted(v for k, v in published.items() if k.startswith("remove_idx"))
        assert paper_recipe(source).data == recipe.data
    assert LLAMA2_13B_FAMILY.base == "meta-llama/Llama-2-13b-hf"
