"""CLI: materialize with both backends, clear one-line errors on bad input."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from gptailor_merge.cli.app import main
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe


def _recipe(family, tmp_path):
    genome = Genome(4, 3, (LayerSpec(0, (1,)), LayerSpec(2, (0, 2), lam=0.7), LayerSpec(3)))
    return genome_to_recipe(genome, FamilyRefs.of(family)).save(tmp_path / "r.yaml")


def test_help_lists_every_command_with_one_line_each():
    out = subprocess.run([sys.executable, "-m", "gptailor_merge", "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("optimize", "materialize", "evaluate", "demo"):
        assert f"    {name}" in out


def test_materialize_both_backends_write_the_same_loadable_model(llama_family, tmp_path):
    recipe = _recipe(llama_family, tmp_path)
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "mk")]) == 0
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "st"), "--backend", "stitch"]) == 0
    for folder in ("mk", "st"):
        assert (tmp_path / folder / "mergekit_config.yml").is_file()
        assert (tmp_path / folder / "tokenizer.json").is_file()
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "mk").eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "st").eval()
    x = torch.randint(3, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (a(x).logits - b(x).logits).abs().max().item() <= 1e-5


def test_materialize_refuses_a_nonempty_folder_with_the_fix(llama_family, tmp_path, capsys):
    recipe = _recipe(llama_family, tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "OutputExistsError" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # --overwrite replaces only a folder gptailor-merge wrote (tests/test_faults.py has the other cases)
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "out"), "--overwrite"]) == 2
    assert (tmp_path / "out" / "x").read_text() == "keep"
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "mine")]) == 0
    (tmp_path / "mine" / "x").write_text("stale")
    assert main(["-q", "materialize", str(recipe), str(tmp_path / "mine"), "--overwrite"]) == 0
    assert not (tmp_path / "mine" / "x").exists() and (tmp_path / "mine" / "config.json").is_file()


def test_malformed_or_out_of_range_recipe_is_a_one_line_error(llama_family, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: passthrough\nslices: [oops\n")
    assert main(["-q", "materialize", str(bad), str(tmp_path / "o1")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    base = llama_family.base.model_id
    bad.write_text(f"merge_method: passthrough\nbase_model: {base}\nslices:\n- sources: [{{model: {base}, layer_range: [2, 9]}}]\n")
    assert main(["-q", "materialize", str(bad), str(tmp_path / "o2")]) == 2
    assert "outside the family's 4 layers" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_missing_model_in_a_recipe_names_the_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: passthrough\nbase_model: /no/such/model\nslices:\n- sources: [{model: /no/such/model, layer_range: [0, 2]}]\n")
    assert main(["-q", "materialize", str(bad), str(tmp_path / "o")]) == 2
    assert "/no/such/model" in capsys.readouterr().err


def test_a_second_command_of_the_same_name_is_an_error():
    from gptailor_merge.cli.registry import COMMANDS, command

    assert "optimize" in COMMANDS and [n for n, _ in COMMANDS.items()][:1]
    with pytest.raises(ValueError, match="command 'optimize' is already registered"):
        command("optimize", "again", lambda p: None)(lambda args: 0)
