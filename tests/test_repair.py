"""Linear repair of the cuts: the fit is least squares, fusing is exact, an identity block gets the
identity map, no removal changes nothing, and a repaired folder is rebuilt bitwise from its recipe."""

import json
import random

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gptailor_merge.core.errors import RepairError
from gptailor_merge.core.genome import Genome
from gptailor_merge.materialize.stitch import Stitcher
from gptailor_merge.repair.fit import (
    NormalEquations,
    apply_maps,
    fit_linear_map,
    fuse_map,
    removed_runs,
    repair_model,
)

WORDS = "the cat dog sat ran on mat log fox jumps over lazy quick brown".split()


def _texts(n: int = 24, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(14)) for _ in range(n)]


def _logits(model, seed: int = 4) -> torch.Tensor:
    x = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(input_ids=x, use_cache=False).logits.double().clone()


# ---- the fit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ridge", [0.0, 0.05])
def test_fit_equals_reference_least_squares(ridge):
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(300, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen, dtype=torch.float64)
    d = torch.randn(300, 12, generator=gen, dtype=torch.float64)
    eq = NormalEquations()
    eq.add(m[:100].float(), d[:100].float())  # summed in float64, in chunks
    eq.add(m[100:].float(), d[100:].float())
    m32, d32 = m.float().double(), d.float().double()
    lam = ridge * float((m32 * m32).sum()) / 12
    # reference: lstsq on the ridge-augmented system [M; sqrt(lam) I] T = [D; 0]
    a = torch.cat([m32, lam**0.5 * torch.eye(12, dtype=torch.float64)])
    b = torch.cat([d32, torch.zeros(12, 12, dtype=torch.float64)])
    reference = torch.linalg.lstsq(a, b).solution
    t = fit_linear_map(eq, ridge)
    assert t.dtype == torch.float64
    assert torch.allclose(t, reference, atol=1e-9, rtol=1e-9)
    assert eq.residual(t) == pytest.approx(float((m32 @ t - d32).norm() / d32.norm()), rel=1e-9)


def test_fit_refuses_a_singular_system_and_no_tokens():
    eq = NormalEquations()
    with pytest.raises(RepairError, match="no calibration token"):
        fit_linear_map(eq)
    eq.add(torch.zeros(5, 4), torch.ones(5, 4))
    with pytest.raises(RepairError, match="raise the ridge"):
        fit_linear_map(eq, 0.0)


def test_removed_runs_are_maximal_and_a_run_at_layer_0_is_left_alone():
    g = Genome.base_only(8, 2, removed=[0, 1, 3, 4, 6])
    runs, skipped = removed_runs(g)
    assert skipped == [(0, 1)]
    assert [(r.removed, r.layer_idx, r.position) for r in runs] == [((3, 4), 2, 0), ((6,), 5, 1)]
    assert removed_runs(Genome.base_only(8, 2, removed=[7]))[0][0].removed == (7,)
    assert removed_runs(Genome.base_only(8, 2)) == ([], [])


# ---- fusing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family_name", ["llama_family", "mistral_family"])
def test_fused_model_equals_map_applied_by_a_hook(family_name, request):
    family = request.getfixturevalue(family_name)
    genome = Genome.from_choices(4, 3, [2], [(), (0, 1), (), (2,)])
    t = torch.eye(32, dtype=torch.float64) + 0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1),
                                                                  dtype=torch.float64)
    stitcher = Stitcher(family)
    model = stitcher.build(genome)
    layer = model.model.layers[1]  # source layer 1, the kept layer before removed layer 2
    handle = layer.mlp.register_forward_hook(lambda mod, args, out: (out.double() @ t).to(out.dtype))
    hooked = _logits(model)
    handle.remove()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    fused = _logits(apply_maps(model, family, genome, {1: t}))
    assert (fused - hooked).abs().max() <= 1e-5
    assert (fused - _logits(stitcher.build(genome))).abs().max() > 1e-3  # the map did something
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items()), "source layer untouched"


def test_fuse_map_names_an_unsupported_layer():
    with pytest.raises(RepairError, match="mlp.down_proj"):
        fuse_map(torch.nn.Linear(4, 4), torch.eye(4))


# ---- whole repairs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def identity_family(tiny_family_paths, tmp_path_factory):
    """The tiny Llama family whose base layer 2 is an exact identity (o_proj and down_proj zero)."""
    from gptailor_merge.family.family import Family

    base, cands = tiny_family_paths["llama"]
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    out = tmp_path_factory.mktemp("identity") / "base"
    model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return Family.load(out, cands)


def test_an_exact_identity_block_gets_the_identity_map(identity_family):
    genome = Genome.base_only(4, 3, removed=[2])
    _, info = repair_model(identity_family, genome, _texts(), ridge=0.0, batch_size=8, max_length=32)
    t = info.maps[1]
    assert t.shape == (32, 32)
    assert (t - torch.eye(32, dtype=torch.float64)).abs().max() < 1e-3
    assert info.fits[0].error_repaired < 1e-5 and info.fits[0].n_tokens > 32


def test_self_target_gives_the_identity_map_on_a_merged_prefix_where_the_base_target_does_not(identity_family):
    """Removed base layer 2 is an identity, the kept layers before it come from fine-tunes: put back
    into the candidate's own stream it adds nothing (T = I), while the dense base's state differs
    from the candidate's by the whole merged prefix, which the `base` target asks the map to undo."""
    genome = Genome.from_choices(4, 3, [2], [(0, 1), (2,), (), (0, 2)])
    kwargs = dict(ridge=0.0, batch_size=8, max_length=32)
    _, own = repair_model(identity_family, genome, _texts(), target="self", **kwargs)
    _, base = repair_model(identity_family, genome, _texts(), target="base", **kwargs)
    assert own.target == "self" and base.target == "base"
    assert (own.maps[1] - torch.eye(32, dtype=torch.float64)).abs().max() < 1e-3
    assert own.fits[0].error_repaired < 1e-5
    assert base.fits[0].error_unrepaired > 0.05 and base.fits[0].error_repaired > 0.01


def test_both_targets_agree_on_a_base_only_genome_with_one_run(llama_family):
    """There the candidate with the run put back is the dense base, so the targets are the same."""
    genome = Genome.base_only(4, 3, removed=[2])
    kwargs = dict(ridge=1e-4, batch_size=8, max_length=32)
    _, own = repair_model(llama_family, genome, _texts(), target="self", **kwargs)
    _, base = repair_model(llama_family, genome, _texts(), target="base", **kwargs)
    assert torch.allclose(own.maps[1], base.maps[1], atol=1e-6, rtol=1e-6)
    assert own.fits[0].error_unrepaired > 0.01  # the block does something: the test can fail
    with pytest.raises(RepairError, match="unknown repair target 'dense'"):
        repair_model(llama_family, genome, _texts(), target="dense", **kwargs)


@pytest.mark.parametrize("family_name", ["llama_family", "mistral_family"])
def test_repair_lowers_the_fit_error_run_by_run(family_name, request):
    family = request.getfixturevalue(family_name)
    genome = Genome.from_choices(4, 3, [0, 2], [(), (1,), (), (0, 2)])
    model, info = repair_model(family, genome, _texts(), batch_size=8, max_length=32)
    assert info.skipped == ((0,),)
    assert [f.run.removed for f in info.fits] == [(2,)] and set(info.maps) == {1}
    assert info.fits[0].error_repaired < info.fits[0].error_unrepaired
    unrepaired = _logits(Stitcher(family).build(genome))
    assert (_logits(model) - unrepaired).abs().max() > 1e-4


def test_a_genome_without_repairable_removals_is_unchanged_bitwise(llama_family):
    for genome in (Genome.from_choices(4, 3, [], [(), (0,), (1, 2), ()]), Genome.base_only(4, 3, removed=[0])):
        model, info = repair_model(llama_family, genome, _texts(4), batch_size=4, max_length=16)
        assert info.maps == {}
        repaired = {k: v.clone() for k, v in model.state_dict().items()}
        plain = Stitcher(llama_family).build(genome).state_dict()
        assert repaired.keys() == plain.keys()
        assert all(torch.equal(repaired[k], plain[k]) for k in plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cpu_fit_the_same_maps(llama_family):
    genome = Genome.from_choices(4, 3, [2], [(), (0,), (), ()])
    kwargs = dict(batch_size=8, max_length=32)
    _, cpu = repair_model(llama_family, genome, _texts(), device="cpu", **kwargs)
    _, gpu = repair_model(llama_family, genome, _texts(), device="cuda", **kwargs)
    assert (cpu.maps[1] - gpu.maps[1]).abs().max() < 1e-3


# ---- folders and the CLI -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_setup(tiny_family_paths, tmp_path_factory):
    root = tmp_path_factory.mktemp("repair_cli")
    base, cands = tiny_family_paths["mistral"]
    (root / "txt.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(40, seed=1)))
    config = {"family": {"base": str(base), "candidates": [str(c) for c in cands]},
              "target": {"layers": 3}, "tasks": [str(root / "txt.jsonl")],
              "eval": {"batch_size": 8, "max_length": 32}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_prune_repair_folder_is_rebuilt_bitwise_by_materialize_and_loads_in_transformers(cli_setup, tmp_path, capsys):
    from gptailor_merge.cli.app import main

    recipe, folder = tmp_path / "pruned.yaml", tmp_path / "pruned_repaired"
    rc = main(["-q", "prune", "--method", "reverse", "--family", str(cli_setup / "config.yaml"), "--out", str(recipe),
               "--n-calibration", "5", "--repair", "linear", "--repair-texts", "8", "--repair-out", str(folder)])
    assert rc == 0, capsys.readouterr().err
    assert {"model.safetensors", "config.json", "mergekit_config.yml", "repair.safetensors",
            "repair.json"} <= {p.name for p in folder.iterdir()}
    body = json.loads((folder / "repair.json").read_text())
    # the repair fits on its own count of texts, not the baseline's 5
    assert body["settings"]["n_texts"] == 8 and body["settings"]["target"] == "self"
    assert body["result"]["runs"][0]["removed"] == [2] and body["result"]["runs"][0]["layer"] == 1
    maps = load_file(str(folder / "repair.safetensors"))
    assert set(maps) == {"layer.1"} and maps["layer.1"].dtype == torch.float64

    # the recipe alone gives other weights; recipe + settings give these, bit for bit
    plain, again = tmp_path / "plain", tmp_path / "again"
    assert main(["-q", "materialize", str(recipe), str(plain), "--backend", "stitch"]) == 0
    assert main(["-q", "materialize", str(folder / "mergekit_config.yml"), str(again), "--repair", "linear",
                 "--repair-settings", str(folder / "repair.json")]) == 0, capsys.readouterr().err
    ours, theirs, unrepaired = _weights(folder), _weights(again), _weights(plain)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    down = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(ours[down], unrepaired[down])
    assert all(torch.equal(ours[k], unrepaired[k]) for k in ours if k != down)
    for name in ("model.safetensors", "repair.safetensors", "mergekit_config.yml"):  # the files, byte for byte
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 3 and torch.isfinite(_logits(model)).all()


def test_materialize_repair_needs_calibration_and_refuses_bad_settings(cli_setup, tmp_path, capsys):
    from gptailor_merge.cli.app import main

    recipe = tmp_path / "r.yaml"
    assert main(["-q", "prune", "--method", "reverse", "--family", str(cli_setup / "config.yaml"),
                 "--out", str(recipe)]) == 0
    rc = main(["-q", "materialize", str(recipe), str(tmp_path / "out"), "--repair", "linear"])
    assert rc == 2 and "--calibration" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": {"tasks": [str(cli_setup / "txt.jsonl")], "ridge": -1}}))
    rc = main(["-q", "materialize", str(recipe), str(tmp_path / "out"), "--repair", "linear",
               "--repair-settings", str(bad)])
    assert rc == 2 and "ridge" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_push_card_of_a_repaired_folder_says_what_was_repaired(cli_setup, tmp_path, capsys):
    from gptailor_merge.cli.app import main

    folder = tmp_path / "rep"
    assert main(["-q", "prune", "--method", "reverse", "--family", str(cli_setup / "config.yaml"),
                 "--out", str(tmp_path / "r.yaml"), "--repair", "linear", "--repair-out", str(folder)]) == 0
    assert main(["-q", "push", str(folder), "me/repaired", "--dry-run", str(tmp_path / "up")]) == 0
    card = (tmp_path / "up" / "README.md").read_text()
    assert "## Repair of the cuts" in card and "differ from what the recipe alone gives" in card
    assert "txt" in card and "--repair linear" in card
    assert (tmp_path / "up" / "repair.safetensors").is_file()


def test_optimize_repair_writes_the_repaired_best_model_and_its_heldout_row(cli_setup, tmp_path):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    data.update(out_dir=str(tmp_path / "run"), search={"n_trials": 4, "max_examples": 6, "seeds": False})
    outcome = optimize(RunConfig.from_dict(data), progress=False, repair="linear")
    folder = outcome.run_dir / "best_model_repaired"
    assert (folder / "repair.safetensors").is_file() and (folder / "model.safetensors").is_file()
    rows = {r["model"]: r for r in outcome.summary["rows"]}
    row = rows["gptailor-best+repair"]
    assert row["kind"] == "tailored+repair" and row["layers"] == 3
    repaired_runs = json.loads((folder / "repair.json").read_text())["result"]["runs"]
    same = row["tasks"]["txt"]["ppl"] == rows["gptailor-best"]["tasks"]["txt"]["ppl"]
    assert same != bool(repaired_runs), "a map changes the held-out score; no map leaves it as it was"
    assert json.loads((outcome.run_dir / "summary.json").read_text())["rows"][-1]["model"] == "gptailor-best+repair"
    assert "gptailor-best+repair" in (outcome.run_dir / "summary.md").read_text()


def test_optimize_repair_without_a_text_task_fails_before_the_search(cli_setup, tmp_path):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.core.errors import ConfigError
    from gptailor_merge.run.optimize import optimize

    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"context": "the cat", "choices": ["sat", "ran"], "answer": i % 2}) + "\n"
                          for i in range(10)))
    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    data.update(out_dir=str(tmp_path / "run"), tasks=[str(mc)], search={"n_trials": 4, "max_examples": 4})
    with pytest.raises(ConfigError, match="text"):
        optimize(RunConfig.from_dict(data), progress=False, repair="linear")
    assert not (tmp_path / "run" / "journal.jsonl").exists()


def test_optimize_repair_without_heldout_still_writes_the_repaired_folder(cli_setup, tmp_path):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    data.update(out_dir=str(tmp_path / "run"), search={"n_trials": 3, "max_examples": 4, "seeds": False})
    outcome = optimize(RunConfig.from_dict(data), progress=False, repair="linear", heldout=False)
    assert (outcome.run_dir / "best_model_repaired" / "repair.json").is_file()
    assert outcome.summary["rows"] == []
