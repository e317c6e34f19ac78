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
from gptailor_merge.repair.calibration import repair_texts
from gptailor_merge.repair.fit import (
    NormalEquations,
    Rows,
    apply_maps,
    fit_cosine_map,
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
               "--n-calibration", "5", "--repair", "linear", "--repair-texts", "8", "--repair-out", str(folder),
               "--keep-repair"])
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


def test_prune_repair_keeps_its_folder_only_where_validation_says_so(cli_setup, tmp_path, capsys):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.prune import prune

    config = RunConfig.from_dict(yaml.safe_load((cli_setup / "config.yaml").read_text()))
    folder = tmp_path / "rep"
    outcome = prune(config, "reverse", tmp_path / "r.yaml", repair="linear", repair_out=folder, progress=False)
    choice = outcome.repair_choice
    assert choice["kept"] is (choice["repaired_vs_unrepaired"]["ci95"][0] > 0)
    assert folder.is_dir() is choice["kept"] and (outcome.repaired is not None) is choice["kept"]
    assert "on validation" in choice["message"]


def test_repair_sources_and_objective_flags_reach_the_fitted_settings(cli_setup, tmp_path, capsys):
    from gptailor_merge.cli.app import main

    out = tmp_path / "p.yaml"
    assert main(["-q", "prune", "--family", str(cli_setup / "config.yaml"), "--method", "reverse",
                 "--out", str(out), "--repair", "linear", "--keep-repair",
                 "--repair-sources", "all", "--repair-objective", "cosine", "--repair-balance", "tokens"]) == 0, \
        capsys.readouterr().err
    body = json.loads((tmp_path / "p_repaired" / "repair.json").read_text())
    settings, choice = body["settings"], body["validation_choice"]
    assert (settings["sources"], settings["objective"], settings["balance"]) == ("all", "cosine", "tokens")
    assert set(choice) == {"kept", "message", "repaired_vs_unrepaired", "skills"}  # kept or not, it says why
    # a folder's repair.json fixes the settings: no flag may change them
    rc = main(["-q", "materialize", str(tmp_path / "p_repaired" / "mergekit_config.yml"), str(tmp_path / "again"),
               "--repair", "linear", "--repair-settings", str(tmp_path / "p_repaired" / "repair.json"),
               "--repair-sources", "text", "--repair-balance", "examples"])
    err = capsys.readouterr().err
    assert rc == 2 and "--repair-sources, --repair-balance cannot be combined with --repair-settings" in err


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
                 "--out", str(tmp_path / "r.yaml"), "--repair", "linear", "--repair-out", str(folder),
                 "--keep-repair"]) == 0
    assert main(["-q", "push", str(folder), "me/repaired", "--dry-run", str(tmp_path / "up")]) == 0
    card = (tmp_path / "up" / "README.md").read_text()
    assert "## Repair of the cuts" in card and "differ from what the recipe alone gives" in card
    assert "txt" in card and "--repair linear" in card
    assert (tmp_path / "up" / "repair.safetensors").is_file()


def test_optimize_repair_keeps_the_repair_only_as_validation_chose_and_says_so(cli_setup, tmp_path):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    data.update(out_dir=str(tmp_path / "run"), search={"n_trials": 4, "max_examples": 6, "seeds": False})
    outcome = optimize(RunConfig.from_dict(data), progress=False, repair="linear")
    winner = outcome.summary["selection"]["winner"]
    repair = outcome.summary["repair"]
    assert repair["kept"] is winner["repaired"]
    assert repair["validation"]["repaired_vs_unrepaired"]["ci95"][0] > 0 if repair["kept"] else True
    assert all("repair" in c for c in outcome.summary["selection"]["contenders"]), "every contender is repaired"
    folder = outcome.run_dir / "best_model_repaired"
    rows = {r["model"]: r for r in outcome.summary["rows"]}
    assert folder.is_dir() is repair["kept"] and ("gptailor-best+repair" in rows) is repair["kept"]
    if repair["kept"]:
        assert (folder / "repair.safetensors").is_file() and (folder / "model.safetensors").is_file()
        assert rows["gptailor-best+repair"]["kind"] == "tailored+repair"
    md = (outcome.run_dir / "summary.md").read_text()
    assert "Repair (chosen on validation): the repair " in md


def test_repair_calibrates_on_multiple_choice_tasks_unless_told_text_only(cli_setup, tmp_path):
    from gptailor_merge.core.errors import ConfigError
    from gptailor_merge.run.repair_run import check_repair
    from gptailor_merge.scoring import load_task

    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"context": f"the cat {i}", "choices": ["sat", "ran"], "answer": i % 2}) + "\n"
                          for i in range(10)))
    tasks = [load_task(str(mc))]
    check_repair("linear", tasks, "all")
    with pytest.raises(ConfigError, match="text"):
        check_repair("linear", tasks, "text")


def test_optimize_repair_without_heldout_still_decides_the_repair(cli_setup, tmp_path):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    data.update(out_dir=str(tmp_path / "run"), search={"n_trials": 3, "max_examples": 4, "seeds": False})
    outcome = optimize(RunConfig.from_dict(data), progress=False, repair="linear", heldout=False)
    kept = outcome.summary["repair"]["kept"]
    assert (outcome.run_dir / "best_model_repaired" / "repair.json").is_file() is kept
    assert outcome.summary["rows"] == []


def test_a_resumed_optimize_repair_fits_only_the_winners_repair_and_rebuilds_it_bitwise(cli_setup, tmp_path,
                                                                                        monkeypatch):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.repair import fit
    from gptailor_merge.run.optimize import optimize
    from gptailor_merge.search import selection

    decide = selection.repair_decision  # every repair kept, so the winner's folder is written twice
    monkeypatch.setattr(selection, "repair_decision",
                        lambda *a, **k: (True, {**decide(*a, **k)[1], "kept": True}))
    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    data.update(out_dir=str(tmp_path / "run"), search={"n_trials": 3, "max_examples": 4, "seeds": False})
    first = optimize(RunConfig.from_dict(data), progress=False, repair="linear", heldout=False)
    repaired = first.run_dir / "best_model_repaired"
    weights = {p.name: p.read_bytes() for p in repaired.glob("*.safetensors")}
    assert first.summary["repair"]["kept"] and set(weights) == {"model.safetensors", "repair.safetensors"}
    fits = []
    real = fit.repair_model
    monkeypatch.setattr(fit, "repair_model", lambda *a, **k: fits.append(1) or real(*a, **k))
    again = optimize(RunConfig.from_dict(data), resume=first.run_dir, progress=False, repair="linear", heldout=False)
    assert again.summary["selection"] == first.summary["selection"]
    assert len(fits) == 1  # the winner's folder, nothing else: every contender's repaired score is read back
    assert {p.name: p.read_bytes() for p in repaired.glob("*.safetensors")} == weights


# ---- cosine objective and calibration sources -------------------------------------------------------
def test_cosine_fit_lowers_its_own_objective_from_the_least_squares_start():
    gen = torch.Generator().manual_seed(1)
    rows = Rows()
    t_true = torch.eye(8) + 0.3 * torch.randn(8, 8, generator=gen)
    for _ in range(3):
        m, y = torch.randn(50, 8, generator=gen), torch.randn(50, 8, generator=gen)
        h = (y + m @ t_true) * (1 + torch.rand(50, 1, generator=gen) * 3)  # scale noise: cosine ignores it
        rows.add(m, y, h + 0.05 * torch.randn(50, 8, generator=gen))
    eq = NormalEquations()
    for m, y, h in zip(rows.m, rows.y, rows.h, strict=True):
        eq.add(m, h - y)
    start = fit_linear_map(eq, 0.0)
    t, before, after = fit_cosine_map(rows, start, steps=30)

    def reference(tt):  # the objective written out independently, in float64
        m, y, h = (torch.cat(v).double() for v in (rows.m, rows.y, rows.h))
        p = y + m @ tt.double()
        return float((1 - (p * h).sum(-1) / (p.norm(dim=-1) * h.norm(dim=-1))).mean())

    assert before == pytest.approx(reference(start), rel=1e-4)
    assert after == pytest.approx(reference(t), rel=1e-4)
    assert after < 0.5 * before, "the cosine map fits the direction the scaled targets share"
    assert t.dtype == torch.float64


def test_cosine_repair_on_a_model_records_both_objectives_and_changes_the_map(llama_family):
    genome = Genome.base_only(4, 3, removed=[2])
    kwargs = dict(batch_size=8, max_length=32)
    _, ls = repair_model(llama_family, genome, _texts(), **kwargs)
    _, cos = repair_model(llama_family, genome, _texts(), objective="cosine", cosine_steps=10, **kwargs)
    assert ls.fits[0].cosine_fit is None and cos.objective == "cosine"
    assert cos.fits[0].cosine_fit < cos.fits[0].cosine_lstsq
    assert not torch.equal(cos.maps[1], ls.maps[1])
    assert cos.to_json()["runs"][0]["cosine_fit"] < cos.to_json()["runs"][0]["cosine_lstsq"]
    with pytest.raises(RepairError, match="unknown repair objective"):
        repair_model(llama_family, genome, _texts(), objective="l1", **kwargs)


def test_strength_shrinks_each_map_toward_the_identity_and_zero_is_no_repair(llama_family):
    genome = Genome.base_only(4, 3, removed=[2])
    kwargs = dict(batch_size=8, max_length=32)
    _, full = repair_model(llama_family, genome, _texts(), **kwargs)
    _, half = repair_model(llama_family, genome, _texts(), strength=0.5, **kwargs)
    identity = torch.eye(full.maps[1].shape[0], dtype=full.maps[1].dtype)
    assert torch.allclose(half.maps[1], identity + 0.5 * (full.maps[1] - identity), atol=1e-12)
    assert half.strength == 0.5 and half.to_json()["strength"] == 0.5
    plain = _logits(Stitcher(llama_family).build(genome))
    none, _ = repair_model(llama_family, genome, _texts(), strength=0.0, **kwargs)
    assert torch.allclose(_logits(none), plain, atol=1e-5)
    with pytest.raises(RepairError, match="strength"):
        repair_model(llama_family, genome, _texts(), strength=1.5, **kwargs)


def test_a_multiple_choice_context_with_its_gold_continuation_enters_the_fit(llama_family):
    from gptailor_merge.scoring.examples import ChoiceExample, TextExample
    from gptailor_merge.scoring.task import make_task

    texts = [TextExample(t) for t in _texts(12)]
    mc = [ChoiceExample(f"the fox {w} and the", ("cat", "dog"), i % 2) for i, w in enumerate(WORDS)]
    text_task = make_task("txt", texts[:6], texts[6:], "test")
    mc_task = make_task("mc", mc[:7], mc[7:], "test")
    only_text = repair_texts([text_task, mc_task], None, "text")
    every = repair_texts([text_task, mc_task], None, "all")
    assert only_text == [ex.text for ex in text_task.search]
    assert every[len(only_text):] == [ex.context + " " + ex.choices[ex.answer] for ex in mc_task.search]
    genome = Genome.base_only(4, 3, removed=[2])
    _, a = repair_model(llama_family, genome, only_text, batch_size=8, max_length=32)
    _, b = repair_model(llama_family, genome, every, batch_size=8, max_length=32)
    assert b.fits[0].n_tokens > a.fits[0].n_tokens and not torch.equal(a.maps[1], b.maps[1])


def test_a_repaired_finalist_is_rebuilt_bitwise_from_its_recipe_and_repair_json(cli_setup, tmp_path, capsys):
    """The winner's folder is written from the maps fitted during the validation pick (not fitted
    again); `materialize --repair` from its recipe and repair.json gives the same bytes."""
    from gptailor_merge.cli.app import main
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
    from gptailor_merge.repair.folder import SOURCES
    from gptailor_merge.run.repair_run import FinalistRepair, write_repaired
    from gptailor_merge.run.resolve import load_tasks
    from gptailor_merge.search.evaluator import build_evaluator
    from gptailor_merge.search.selection import Contender

    data = yaml.safe_load((cli_setup / "config.yaml").read_text())
    config = RunConfig.from_dict({**data, "out_dir": str(tmp_path / "run")})
    family = Family.load(config.family.base, config.family.candidates)
    evaluator = build_evaluator(config, family, load_tasks(config))
    genome = Genome.from_choices(4, 3, [2], [(), (1,), (), (0, 2)])  # a merged layer 3; layer 1 takes the map
    repairer = FinalistRepair(evaluator, config)
    score, record = repairer(genome, None)
    assert record["maps"] == 1 and genome.genome_id in repairer.fits
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    genome_to_recipe(genome, FamilyRefs.of(family)).save(run_dir / "best.yaml")
    winner = Contender("trial 1", "finalist", genome, None, 1.0, 1.0, score, True,
                       {"kept": True, "message": "kept by hand"})
    summary = {"rows": []}
    folder = write_repaired(run_dir, repairer, winner, config, summary)
    assert summary["repair"]["kept"] is True and summary["repair"]["settings"]["sources"] == SOURCES
    again = tmp_path / "again"
    assert main(["-q", "materialize", str(folder / "mergekit_config.yml"), str(again), "--repair", "linear",
                 "--repair-settings", str(folder / "repair.json")]) == 0, capsys.readouterr().err
    for name in ("model.safetensors", "repair.safetensors"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name
    # the folder says why it holds a repair: the choice in repair.json, and on its model card
    from gptailor_merge.repair.folder import card_section

    assert json.loads((folder / "repair.json").read_text())["validation_choice"] == {
        "kept": True, "message": "kept by hand"}
    assert "Chosen on validation: kept by hand." in card_section(folder)


def test_token_balance_gives_every_task_the_same_weight_and_equals_repeating_rows():
    from gptailor_merge.repair.fit import balanced_weights

    lengths, groups = [10, 30, 5, 5, 2], [0, 0, 1, 1, 2]
    w = balanced_weights(lengths, groups)
    per_task = {g: sum(n * x for n, x, gg in zip(lengths, w, groups, strict=True) if gg == g) for g in (0, 1, 2)}
    assert all(v == pytest.approx(sum(lengths) / 3) for v in per_task.values())
    with pytest.raises(RepairError, match="groups"):
        balanced_weights(lengths, groups[:-1])
    # weighted sums with integer weights are the sums over repeated rows
    gen = torch.Generator().manual_seed(1)
    m, d = torch.randn(20, 6, generator=gen, dtype=torch.float64), torch.randn(20, 6, generator=gen, dtype=torch.float64)
    reps = torch.tensor([1, 3] * 10, dtype=torch.float64)
    weighted, repeated = NormalEquations(), NormalEquations()
    weighted.add(m, d, reps)
    repeated.add(m.repeat_interleave(reps.long(), 0), d.repeat_interleave(reps.long(), 0))
    assert torch.allclose(weighted.gram, repeated.gram, atol=1e-12)
    assert torch.allclose(weighted.cross, repeated.cross, atol=1e-12)
    assert weighted.target_sq == pytest.approx(repeated.target_sq, rel=1e-12)
    t = fit_linear_map(weighted)
    assert torch.allclose(t, fit_linear_map(repeated), atol=1e-9)
    rows_w, rows_r = Rows(), Rows()
    rows_w.add(m, m, d, reps)
    rows_r.add(m.repeat_interleave(reps.long(), 0), m.repeat_interleave(reps.long(), 0),
               d.repeat_interleave(reps.long(), 0))
    assert float(rows_w.cosine_distance(t.float())) == pytest.approx(float(rows_r.cosine_distance(t.float())), rel=1e-5)


def test_a_token_balanced_repair_weighs_the_short_multiple_choice_contexts_up(llama_family):
    from gptailor_merge.repair.calibration import repair_groups
    from gptailor_merge.scoring.examples import ChoiceExample, TextExample
    from gptailor_merge.scoring.task import make_task

    texts = [TextExample(t) for t in _texts(12)]
    mc = [ChoiceExample(f"the fox {w}", ("cat", "dog"), i % 2) for i, w in enumerate(WORDS)]
    tasks = [make_task("txt", texts[:6], texts[6:], "test"), make_task("mc", mc[:7], mc[7:], "test")]
    every, groups = repair_texts(tasks, None, "all"), repair_groups(tasks, None, "all")
    assert groups == [0] * 6 + [1] * len(tasks[1].search) and len(groups) == len(every)
    genome = Genome.base_only(4, 3, removed=[2])
    _, plain = repair_model(llama_family, genome, every, batch_size=8, max_length=32)
    _, balanced = repair_model(llama_family, genome, every, batch_size=8, max_length=32, balance="tokens",
                               text_groups=groups)
    assert balanced.fits[0].n_tokens == plain.fits[0].n_tokens and balanced.balance == "tokens"
    assert not torch.equal(plain.maps[1], balanced.maps[1])
    # weights that are all one are the unweighted fit
    _, ones = repair_model(llama_family, genome, every, batch_size=8, max_length=32, balance="tokens",
                           text_groups=[0] * len(every))
    assert torch.allclose(ones.maps[1], plain.maps[1], atol=1e-10)
    with pytest.raises(RepairError, match="text_groups"):
        repair_model(llama_family, genome, every, balance="tokens")
    with pytest.raises(RepairError, match="balance"):
        repair_model(llama_family, genome, every, balance="words", text_groups=groups)


def test_settings_written_before_the_balance_existed_load_as_they_were_fitted(tmp_path):
    from gptailor_merge.repair.folder import RepairSettings

    new = RepairSettings(tasks=("t.jsonl",))
    assert (new.sources, new.objective, new.balance) == ("all", "cosine", "tokens")  # today's defaults
    old = new.model_dump(mode="json")
    old.pop("balance")
    (tmp_path / "repair.json").write_text(json.dumps({"settings": old}))
    assert RepairSettings.load(tmp_path).balance == "examples"  # every token once, as it was fitted
