"""The in-memory stitcher and the mergekit backend give the same model (docs/ARCHITECTURE.md, "Two materializers")."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from gptailor_merge.core.errors import OutputExistsError, RecipeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
from gptailor_merge.materialize.stitch import Stitcher

L, K = 4, 3
GENOMES = {
    "removal_only": Genome.base_only(L, K, removed=[1]),
    "first_and_last_removed": Genome.base_only(L, K, removed=[0, 3]),
    "selection_first_last": Genome(L, K, (LayerSpec(0, (1,)), LayerSpec(2, (2,)), LayerSpec(3, (0,)))),
    "ta_mix": Genome(L, K, (LayerSpec(0, (1,)), LayerSpec(1), LayerSpec(2, (0, 2), lam=0.7))),
    "ta_every_layer_merged": Genome(L, K, tuple(LayerSpec(i, (0, 1, 2), lam=0.4 + 0.1 * i) for i in range(L))),
    "ta_first_last_merged": Genome(L, K, (LayerSpec(0, (0, 1), lam=0.9), LayerSpec(2), LayerSpec(3, (1, 2), lam=0.5))),
    "ties_mix": Genome(L, K, (LayerSpec(0, (0, 1, 2), lam=0.6, density=0.5), LayerSpec(1, (2,)),
                              LayerSpec(3, (1, 2), lam=0.5, density=0.7)), method="ties"),
    "linear_mix": Genome(L, K, (LayerSpec(0, (0, 2), weights=(0.3, 0.7)), LayerSpec(2), LayerSpec(3, (1,))), method="linear"),
    "breadcrumbs_ties_mix": Genome(L, K, (LayerSpec(0, (0, 1, 2), lam=0.8, density=0.5), LayerSpec(1, (1,)),
                                          LayerSpec(2, (0, 2), lam=1.2, density=0.6)), method="breadcrumbs_ties"),
}


@pytest.fixture(scope="module")
def inputs():
    return torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(0))


def _logits(model, x):
    with torch.inference_mode():
        return model(x).logits.float()


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("name", list(GENOMES))
def test_stitch_equals_mergekit(arch, name, request, tmp_path, inputs):
    family = request.getfixturevalue(f"{arch}_family")
    genome = GENOMES[name]
    recipe = genome_to_recipe(genome, FamilyRefs.of(family))
    merged = AutoModelForCausalLM.from_pretrained(materialize_with_mergekit(recipe, tmp_path / "mk")).eval()
    stitched = Stitcher(family).build(genome)
    assert merged.config.num_hidden_layers == stitched.config.num_hidden_layers == genome.n_kept
    a, b = merged.state_dict(), stitched.state_dict()
    assert set(a) == set(b)
    if not genome.has_merges:  # passthrough: identical tensors
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (_logits(merged, inputs) - _logits(stitched, inputs)).abs().max().item() <= 1e-5
    base = AutoModelForCausalLM.from_pretrained(family.base.path).state_dict()
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(a[key], base[key]), f"{key} must come from the base"


def test_selection_in_passthrough_is_the_candidates_own_layer(llama_family):
    stitched = Stitcher(llama_family).build(GENOMES["selection_first_last"])
    cand = AutoModelForCausalLM.from_pretrained(llama_family.candidates[2].path)
    assert torch.equal(stitched.model.layers[1].mlp.up_proj.weight, cand.model.layers[2].mlp.up_proj.weight)


def test_stitcher_reuses_cached_layers_across_candidates(llama_family):
    stitcher = Stitcher(llama_family)
    stitcher.build(GENOMES["ta_mix"])
    built = stitcher.stats["built"]
    stitcher.build(GENOMES["ta_mix"])
    assert stitcher.stats["built"] == built and stitcher.stats["cache_hits"] >= 2


@pytest.mark.parametrize("name", ["ta_first_last_merged", "breadcrumbs_ties_mix"])
def test_stock_mergekit_yaml_cli_gives_the_stitched_model(name, llama_family, tmp_path, inputs):
    genome = GENOMES[name]
    path = genome_to_recipe(genome, FamilyRefs.of(llama_family)).save(tmp_path / "recipe.yaml")
    cli = [sys.executable, "-c", "from mergekit.scripts.run_yaml import main; main()"]
    subprocess.run([*cli, str(path), str(tmp_path / "out")], check=True, capture_output=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    stitched = Stitcher(llama_family).build(genome)
    assert (_logits(merged, inputs) - _logits(stitched, inputs)).abs().max().item() <= 1e-5


def test_mergekit_refuses_nonempty_output_folder(llama_family, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    recipe = genome_to_recipe(GENOMES["removal_only"], FamilyRefs.of(llama_family))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        materialize_with_mergekit(recipe, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").exists()


def test_qwen2_layer_types_limit_of_mergekit_is_a_clear_error_and_stitch_works(tiny_family_paths, tmp_path, inputs):
    from gptailor_merge.family.family import Family

    base, cands = tiny_family_paths["qwen2"]
    family = Family.load(base, cands)
    genome = GENOMES["ta_mix"]
    with pytest.raises(RecipeError, match="--backend stitch"):
        materialize_with_mergekit(genome_to_recipe(genome, FamilyRefs.of(family)), tmp_path / "q")
    assert not (tmp_path / "q").exists()
    out = Stitcher(family).save(genome, tmp_path / "qs")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.layer_types == ["full_attention"] * 3
    assert torch.equal(_logits(reloaded, inputs), _logits(Stitcher(family).build(genome), inputs))
