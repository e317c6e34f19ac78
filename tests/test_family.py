import pytest

from gptailor_merge.core.errors import FamilyMismatchError, ModelNotFoundError
from gptailor_merge.demo.synthetic import make_synthetic_family
from gptailor_merge.family.family import Family


def test_family_reports_layer_and_total_parameter_counts(llama_family):
    fam = llama_family
    assert fam.n_layers == 4 and fam.n_candidates == 3
    assert len(fam.layer_param_counts) == 4
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fam.base.path)
    assert fam.total_params == sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert fam.layer_param_counts[0] == per_layer
    assert fam.params_with_layers([0, 1, 2]) == fam.total_params - per_layer
    assert "4 layers" in fam.summary()


def test_tensors_load_lazily_and_match_the_checkpoint(llama_family):
    import torch
    from safetensors.torch import load_file

    name = "model.layers.1.mlp.up_proj.weight"
    full = load_file(str(llama_family.candidates[1].path / "model.safetensors"))
    assert torch.equal(llama_family.candidates[1].tensor(name), full[name])


def test_layer_count_mismatch_names_the_model_and_field(tmp_path, tiny_family_paths):
    base, cands = tiny_family_paths["llama"]
    other, _ = make_synthetic_family(tmp_path / "six", n_layers=6, n_candidates=0)
    with pytest.raises(FamilyMismatchError, match="candidate 'base' has num_hidden_layers=6") as info:
        Family.load(base, [cands[0], other])
    assert info.value.field == "num_hidden_layers"


def test_hidden_size_mismatch_is_rejected(tmp_path, tiny_family_paths):
    base, _ = tiny_family_paths["llama"]
    other, _ = make_synthetic_family(tmp_path / "wide", hidden=64, n_candidates=0)
    with pytest.raises(FamilyMismatchError, match="hidden_size"):
        Family.load(base, [other], names=["base", "wide"])


def test_architecture_mismatch_is_rejected(tiny_family_paths):
    base, _ = tiny_family_paths["llama"]
    qwen, _ = tiny_family_paths["qwen2"]
    with pytest.raises(FamilyMismatchError, match="model_type"):
        Family.load(base, [qwen])


def test_missing_local_path_says_check_the_path(tiny_family_paths):
    base, _ = tiny_family_paths["llama"]
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Family.load(base, ["/nonexistent/model/folder"])


def test_a_missing_relative_path_names_the_directory_it_was_read_from(tiny_family_paths, tmp_path, monkeypatch):
    base, _ = tiny_family_paths["llama"]
    monkeypatch.chdir(tmp_path)  # a recipe's './base' read from somewhere else than its family's folder
    with pytest.raises(ModelNotFoundError, match="does not exist") as err:
        Family.load(base, ["./base"])
    assert str(tmp_path) in str(err.value) and "relative" in str(err.value)
    with pytest.raises(ModelNotFoundError) as absolute:
        Family.load(base, ["/nonexistent/model/folder"])
    assert "relative" not in str(absolute.value)


def test_unknown_hub_id_offline_fails_with_the_fix(tiny_family_paths):
    base, _ = tiny_family_paths["llama"]
    with pytest.raises(ModelNotFoundError, match="could not be fetched.*HF_HUB_OFFLINE"):
        Family.load(base, ["no-such-org/no-such-model-xyz"])


def test_plus_or_at_in_a_path_is_rejected_before_mergekit_misreads_it(tmp_path, tiny_family_paths):
    base, _ = tiny_family_paths["llama"]
    with pytest.raises(ModelNotFoundError, match="LoRA/revision"):
        Family.load(base, [str(tmp_path / "a+b")])
