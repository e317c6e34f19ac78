"""Pruning baselines on a tiny Llama whose layer 2 is an exact identity (its attention o_proj and
MLP down_proj are zero), so the right first removal is forced; recipes, seeds and the CLI."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor_merge.baselines import (
    BASELINES,
    Calibration,
    baseline_recipe,
    baseline_removals,
    calibration_nll,
    calibration_texts,
    collapsed_model,
    get_baseline,
    run_baseline,
    save_collapsed,
)
from gptailor_merge.core.errors import ConfigError, TaskError

N_LAYERS, IDENTITY = 6, 2
WORDS = "the cat dog sat ran on mat log fox jumps over lazy quick brown".split()


def _zero_identity(model) -> None:
    layer = model.model.layers[IDENTITY]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def _train_base(path, texts) -> None:
    """A few Adam steps so that every other layer matters to the calibration perplexity."""
    from gptailor_merge.scoring.batching import pad_right
    from gptailor_merge.scoring.perplexity import encode_text

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids, mask = pad_right([encode_text(tokenizer, t, 64) for t in texts], torch.device("cpu"),
                          tokenizer.pad_token_id)
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    _zero_identity(model)
    model.train()
    for _ in range(40):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _zero_identity(model)
    model.eval().save_pretrained(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gptailor_merge.demo.synthetic import make_synthetic_family

    root = tmp_path_factory.mktemp("baselines")
    base, cands = make_synthetic_family(root / "fam", n_layers=N_LAYERS, seed=3)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40)]
    (root / "txt.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with open(root / "mc.jsonl", "w") as f:
        for _ in range(10):
            choices = [rng.choice(WORDS) for _ in range(3)]
            f.write(json.dumps({"context": " ".join(rng.sample(WORDS, 5)), "choices": choices, "answer": 0}) + "\n")
    _train_base(base, texts)
    config = {"family": {"base": str(base), "candidates": [str(c) for c in cands]},
              "target": {"layers": N_LAYERS - 1},
              "tasks": [str(root / "mc.jsonl"), str(root / "txt.jsonl")],
              "eval": {"batch_size": 8, "max_length": 64}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return SimpleNamespace(root=root, base=base, cands=cands, config=root / "config.yaml")


@pytest.fixture(scope="module")
def calib(setup):
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.stitch import Stitcher
    from gptailor_merge.scoring import load_task

    family = Family.load(setup.base, setup.cands)
    texts = calibration_texts([load_task(str(setup.root / "txt.jsonl"))], 16)
    return Calibration(Stitcher(family), AutoTokenizer.from_pretrained(setup.base), tuple(texts),
                       batch_size=8, max_length=64)


def _logits(model, n=4):
    x = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        return model(x).logits.float().clone()


def test_reverse_drops_the_layers_just_below_the_final_one():
    family = SimpleNamespace(n_layers=12, n_candidates=3)
    stub = Calibration(SimpleNamespace(family=family), None, ("text",))
    assert run_baseline("reverse", stub, 3).removed == [8, 9, 10]
    assert run_baseline("reverse", stub, 1).removed == [10]
    assert run_baseline("reverse", stub, 0).removed == []


@pytest.mark.parametrize("method", ["shortgpt", "angular", "greedy-ppl"])
def test_exact_identity_layer_is_removed_first(calib, method):
    # (not LaCo: its collapse gives the prior layer the rear one's projections under its own
    # norms, so no collapse is exactly lossless, identity layer or not)
    assert run_baseline(method, calib, 1).removed == [IDENTITY]


def test_shortgpt_removes_the_lowest_block_influence_layers(calib):
    result = run_baseline("shortgpt", calib, 2)
    bi = result.details["block_influence"]
    assert bi[IDENTITY] == 0.0 and all(b > 1e-3 for i, b in enumerate(bi) if i != IDENTITY)
    assert result.removed == sorted(sorted(range(N_LAYERS), key=bi.__getitem__)[:2])


@pytest.mark.parametrize("tokens", ["last", "all"])
def test_angular_removes_the_contiguous_block_of_smallest_angular_distance(calib, tokens):
    one = run_baseline("angular", calib, 1, tokens=tokens)
    assert one.removed == [IDENTITY] and one.details["angular_distance"][IDENTITY] == 0.0
    two = run_baseline("angular", calib, 2, tokens=tokens)
    dist = two.details["angular_distance"]
    assert len(dist) == N_LAYERS - 1
    start = dist.index(min(dist))
    assert two.removed == [start, start + 1]


def test_greedy_ppl_removes_each_step_the_layer_that_raises_perplexity_least(calib):
    result = run_baseline("greedy_ppl", calib, 2)
    first, second = (step["removed"] for step in result.details["steps"])
    assert first == IDENTITY and result.removed == sorted([first, second])
    nll = {j: calibration_nll(calib, sorted([IDENTITY, j])) for j in range(N_LAYERS) if j != IDENTITY}
    assert second == min(nll, key=nll.get)
    assert calibration_nll(calib, [IDENTITY]) == calibration_nll(calib, [])  # identity: lossless


def test_greedy_ppl_prefix_reuse_skips_layers_and_changes_nothing(calib):
    from dataclasses import replace

    plain = replace(calib, prefix_cache_bytes=0)
    assert plain.prefix is None and calib.prefix is not None
    before = calib.prefix.stats.skipped
    reused = run_baseline("greedy_ppl", calib, 2)
    assert calib.prefix.stats.skipped > before  # trials removing a late layer reuse the early ones
    assert reused.details == run_baseline("greedy_ppl", plain, 2).details  # bitwise the same nlls
    assert calibration_nll(calib, [4]) == calibration_nll(plain, [4])


LLAMA_PROJECTIONS = sorted(f"{part}.{name}_proj.weight" for part, names in
                           (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
                           for name in names)


def test_laco_finds_the_projections_by_module_type_not_the_norms(calib):
    from gptailor_merge.baselines.laco import projection_names

    layer = calib.stitcher.build(calib.full_genome()).model.layers[0]
    assert projection_names(layer) == LLAMA_PROJECTIONS
    with pytest.raises(Exception, match="no linear projection"):
        projection_names(torch.nn.LayerNorm(4))


def test_laco_threshold_one_without_sweep_misses_the_target_and_says_so(calib):
    with pytest.raises(ConfigError, match=r"LaCo removed only 0 of 2 layers at threshold 1.0"):
        run_baseline("laco", calib, 2, threshold=1.0, sweep=False)


def test_laco_sweeps_the_threshold_down_until_the_target_is_met_and_reports_it(calib):
    result = run_baseline("laco", calib, 2, threshold=1.0)
    d = result.details
    assert d["swept"] and d["requested"]["threshold"] == 1.0 and d["threshold"] < 1.0
    first, last = d["sweep"][0], d["sweep"][-1]
    assert first["threshold"] == 1.0 and not first["reached"] and last["reached"]
    assert [a["threshold"] for a in d["sweep"]] == sorted((a["threshold"] for a in d["sweep"]), reverse=True)
    # each step lowers T to just below the previous pass's best rejected similarity
    for before, after in zip(d["sweep"], d["sweep"][1:], strict=False):
        if after["merge_layers"] == before["merge_layers"] and after["interval"] == before["interval"]:
            assert before["best_rejected"] - 2e-6 <= after["threshold"] < before["best_rejected"]
    assert all(t["accepted"] == (t["similarity"] > d["threshold"]) for t in d["trials"])
    assert len(result.removed) == 2


def test_laco_collapses_rear_projections_into_the_prior_layer_and_keeps_its_norms(calib, tmp_path):
    before = _logits(calib.stitcher.build(calib.full_genome()))
    result = run_baseline("laco", calib, 2, threshold=-1.0, merge_layers=3)
    # the top collapse is layers 3..5 into 3 (C - 1 = 2 to hit the target): 4 and 5 are removed
    assert result.removed == [4, 5] and list(result.collapsed) == [3]
    assert result.details["merged_tensors"] == LLAMA_PROJECTIONS and not result.details["swept"]
    base = calib.family.base
    collapsed = result.collapsed[3]
    for name in LLAMA_PROJECTIONS:
        theta = {i: base.tensor(f"model.layers.{i}.{name}") for i in (3, 4, 5)}
        expected = theta[3] + (theta[4] - theta[3]) + (theta[5] - theta[3])
        assert torch.allclose(collapsed[name], expected, atol=1e-6), name
    norms = [k for k in collapsed if k not in LLAMA_PROJECTIONS]
    assert norms == ["input_layernorm.weight", "post_attention_layernorm.weight"]
    for name in norms:
        assert torch.equal(collapsed[name], base.tensor(f"model.layers.3.{name}")), name
        assert not torch.equal(collapsed[name], base.tensor(f"model.layers.5.{name}")), "trained norms differ"
    logits = _logits(collapsed_model(calib, result))
    passthrough = _logits(calib.stitcher.build(result.genome))
    assert (logits - passthrough).abs().max() > 1e-3, "the collapsed layer is not the base's"
    out = save_collapsed(calib, result, tmp_path / "laco", recipe=baseline_recipe(result, calib.family))
    saved = AutoModelForCausalLM.from_pretrained(out).eval()
    assert saved.config.num_hidden_layers == N_LAYERS - 2
    assert (_logits(saved) - logits).abs().max() <= 1e-5
    assert "LaCo" in yaml.safe_load((out / "laco_removal_recipe.yaml").read_text())["gptailor"]["note"]
    assert torch.equal(_logits(calib.stitcher.build(calib.full_genome())), before), "base left untouched"


def test_laco_similarity_is_the_mean_sentence_cosine_of_flattened_final_states(calib):
    """Hand-computed as the paper does it: one sentence at a time, unpadded, the final layer's
    (normed) hidden states flattened, cosine against the original model's, averaged."""
    from gptailor_merge.baselines.laco import _Collapser, _Slot
    from gptailor_merge.scoring.perplexity import encode_text

    result = run_baseline("laco", calib, 2, threshold=-1.0, merge_layers=3)
    collapser = _Collapser(calib)
    slots = [_Slot(r, None) for r in result.genome.kept]
    module = collapser.collapse([_Slot(3), _Slot(4), _Slot(5)])
    slots = [module if s.rep == 3 else s for s in slots]
    sim = collapser.similarity(slots)

    def final_states(model, ids):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[-1][0].double().flatten()

    full = calib.stitcher.build(calib.full_genome())
    refs = [final_states(full, encode_text(calib.tokenizer, t, calib.max_length)) for t in calib.texts]
    model = collapser.build(slots)
    cosines = [torch.nn.functional.cosine_similarity(
        final_states(model, encode_text(calib.tokenizer, t, calib.max_length)), ref, dim=0)
        for t, ref in zip(calib.texts, refs, strict=True)]
    assert len({len(encode_text(calib.tokenizer, t, 64)) for t in calib.texts}) > 1, "padding is exercised"
    assert sim == pytest.approx(float(torch.stack(cosines).mean()), abs=1e-6)
    assert 0.0 < sim < 1.0
    calib.stitcher.build(calib.full_genome())


def test_every_baseline_recipe_is_valid_mergekit_and_round_trips(calib, tmp_path):
    from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
    from gptailor_merge.materialize.recipe import recipe_to_genome

    for method in BASELINES.names():
        options = {"threshold": 0.0} if method == "laco" else {}
        result = run_baseline(method, calib, 2, **options)
        recipe = baseline_recipe(result, calib.family, metadata={"calibration": {"split": "search"}})
        recipe.merge_config()
        assert recipe.data["merge_method"] == "passthrough"
        assert recipe.metadata["baseline"] == method and recipe.metadata["removed"] == result.removed
        assert recipe_to_genome(recipe) == result.genome
        # the removal set as a recipe materializes with stock mergekit (LaCo's collapsed weights
        # need its own model folder; its recipe holds the removal only)
        out = materialize_with_mergekit(recipe, tmp_path / f"mk-{method}")
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        assert merged.config.num_hidden_layers == N_LAYERS - 2
        assert (_logits(merged) - _logits(calib.stitcher.build(result.genome))).abs().max() <= 1e-5


def test_baseline_removals_are_search_seeds_of_the_target_size(calib):
    from gptailor_merge.search.space import SearchSpace, paper_seeds

    removals = baseline_removals(calib, 2, methods=("reverse", "shortgpt", "angular", "greedy-ppl", "laco"),
                                 options={"laco": {"threshold": 1.0, "sweep": False}})
    assert set(removals) == {"reverse", "shortgpt", "angular", "greedy_ppl"}, "laco misses the target: skipped"
    assert removals["reverse"] == [3, 4] and all(len(r) == 2 for r in removals.values())
    seeds = paper_seeds(SearchSpace(N_LAYERS, 3, N_LAYERS - 2), extra_removals=removals.values())
    seeded = {g.removed for g in seeds}
    assert all(tuple(r) in seeded for r in removals.values())


def test_unknown_baseline_is_a_config_error_with_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'shortgpt'"):
        get_baseline("shortgtp")
    assert get_baseline("greedy-ppl") is get_baseline("greedy_ppl")


def test_calibration_uses_the_search_split_of_text_tasks_only(setup):
    from gptailor_merge.scoring import load_task

    task = load_task(str(setup.root / "txt.jsonl"))
    texts = calibration_texts([task], 5)
    assert texts == [ex.text for ex in task.search[:5]]
    assert not set(texts) & {ex.text for ex in task.heldout}
    with pytest.raises(TaskError, match="calibration needs text"):
        calibration_texts([load_task(str(setup.root / "mc.jsonl"))], 5)
    with pytest.raises(TaskError, match="no calibration text"):
        Calibration(None, None, ())


def test_prune_cli_writes_a_recipe_calibrated_on_the_configs_text_tasks(setup, tmp_path, capsys):
    from gptailor_merge.cli.app import main
    from gptailor_merge.materialize.recipe import Recipe

    out = tmp_path / "pruned.yaml"
    rc = main(["-q", "prune", "--method", "greedy-ppl", "--family", str(setup.config), "--layers",
               str(N_LAYERS - 1), "--out", str(out), "--n-calibration", "8"])
    assert rc == 0, capsys.readouterr().err
    recipe = Recipe.load(out)
    meta = recipe.metadata
    assert meta["baseline"] == "greedy_ppl" and meta["removed"] == [IDENTITY]
    assert meta["calibration"]["tasks"] == ["txt"] and meta["calibration"]["split"] == "search"
    assert meta["calibration"]["n_texts"] == 8
    recipe.merge_config()


def test_prune_cli_rejects_bad_method_impossible_target_and_laco_recipe_path(setup, tmp_path, capsys):
    from gptailor_merge.cli.app import main

    def run(*flags):
        rc = main(["-q", "prune", "--family", str(setup.config), *flags])
        return rc, capsys.readouterr().err

    rc, err = run("--method", "shortgtp", "--out", str(tmp_path / "a.yaml"))
    assert rc == 2 and "Did you mean 'shortgpt'" in err
    rc, err = run("--method", "shortgpt", "--layers", str(N_LAYERS + 1), "--out", str(tmp_path / "b.yaml"))
    assert rc == 2 and f"impossible for a {N_LAYERS}-layer family" in err
    rc, err = run("--method", "laco", "--out", str(tmp_path / "c.yaml"))
    assert rc == 2 and "cannot be written as a mergekit recipe" in err
    rc, err = run("--method", "shortgpt", "--calibration", str(setup.root / "mc.jsonl"),
                  "--out", str(tmp_path / "d.yaml"))
    assert rc == 2 and "calibration needs text" in err
    assert not list(tmp_path.iterdir()), "a failed prune writes nothing"
    rc, err = run("--method", "laco", "--laco-threshold", "0.0", "--out", str(tmp_path / "laco"))
    assert rc == 0, err
    assert (tmp_path / "laco" / "config.json").is_file()
    assert (tmp_path / "laco" / "laco_removal_recipe.yaml").is_file()
