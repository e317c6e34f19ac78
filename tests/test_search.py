"""Search: space by construction, determinism, kill-and-resume, bad input (tiny family, JSONL tasks)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_word_tasks  # noqa: E402

from gptailor_merge.core.config import RunConfig
from gptailor_merge.core.errors import ConfigError, ResumeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.search.space import SearchSpace, paper_seeds, removal_order


@pytest.fixture(scope="module")
def search_setup(tmp_path_factory):
    from gptailor_merge.demo.synthetic import make_synthetic_family

    root = tmp_path_factory.mktemp("search")
    base, cands = make_synthetic_family(root / "fam", n_layers=6, seed=3)
    write_word_tasks(root)
    return root, base, cands


def _config(root, base, cands, out, n_trials=8, **search):
    return RunConfig.from_dict({
        "family": {"base": str(base), "candidates": [str(c) for c in cands]},
        "target": {"layers": 4},
        "tasks": [str(root / "mc.jsonl"), str(root / "txt.jsonl")],
        "search": {"n_trials": n_trials, "max_examples": 9, **search},
        "eval": {"batch_size": 8, "max_length": 64},
        "out_dir": str(out),
    })


def test_every_proposal_keeps_exactly_the_target_layers():
    space = SearchSpace(12, 3, 9, methods=("task_arithmetic", "ties"))
    param = space.parametrization(seed=0)
    for _ in range(50):
        child = param.spawn_child()
        child.mutate()
        assert space.decode(child.value).n_kept == 9


def test_encode_decode_roundtrip_through_nevergrad():
    space = SearchSpace(8, 3, 6, methods=("ties",))
    genome = Genome(8, 3, (LayerSpec(0, (1,)), LayerSpec(1), LayerSpec(2, (0, 2), lam=0.55, density=0.6),
                           LayerSpec(4), LayerSpec(5, (0, 1, 2), lam=0.9, density=0.4), LayerSpec(7)), method="ties")
    param = space.parametrization(seed=0)
    assert space.decode(param.spawn_child(new_value=space.encode(genome)).value) == genome


def test_paper_removal_orders_and_seeds_meet_the_target():
    assert removal_order("higher_first", 8)[:3] == [6, 5, 4]
    assert removal_order("middle_outward", 8)[:2] == [4, 3]
    assert removal_order("alternating", 8)[:4] == [6, 3, 5, 2]
    space = SearchSpace(12, 3, 9)
    seeds = paper_seeds(space)
    assert seeds and all(g.n_kept == 9 for g in seeds)
    assert all(0 in g.kept and 11 in g.kept for g in seeds)
    assert len({g.genome_id for g in seeds}) == len(seeds)


def test_same_seed_and_config_propose_the_same_sequence():
    from gptailor_merge.search.search import make_optimizer

    def proposals():
        space = SearchSpace(10, 3, 7)
        opt = make_optimizer("DiscreteLenglerOnePlusOne", space.parametrization(seed=5), 20)
        out = []
        for i in range(20):
            cand = opt.ask()
            out.append(space.decode(cand.value).genome_id)
            opt.tell(cand, float(i % 7))
        return out

    assert proposals() == proposals()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"search": {"optimizer": "NGOptt"}}, "Did you mean 'NGOpt'"),
        ({"search": {"merge_methods": ["slerp"]}}, "unknown merge method"),
        ({"serach": {}}, "serach: Extra inputs are not permitted"),
        ({"target": {"layers": 0}}, "target.layers"),
        ({"target": {"layers": 3, "remove_fraction": 0.2}}, "exactly one"),
        ({"family": {"base": "/x"}}, "at least one candidate"),
    ],
)
def test_bad_config_is_a_clear_error_before_any_work(data, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(data)


def test_target_that_leaves_no_layers_and_missing_tasks_fail_early(search_setup, tmp_path):
    from gptailor_merge.core.errors import GenomeError, TaskError
    from gptailor_merge.run.optimize import optimize

    root, base, cands = search_setup
    cfg = _config(root, base, cands, tmp_path / "a").model_dump(mode="json")
    cfg["target"] = {"layers": 7}
    with pytest.raises(GenomeError, match="impossible for a 6-layer family"):
        optimize(RunConfig.from_dict(cfg), progress=False)
    cfg["target"] = {"layers": 4}
    cfg["tasks"] = ["no_such_task"]
    cfg["out_dir"] = str(tmp_path / "b")
    with pytest.raises(TaskError, match="no_such_task"):
        optimize(RunConfig.from_dict(cfg), progress=False)


def test_optimize_writes_run_folder_and_mergekit_matches_stitch(search_setup, tmp_path):
    from gptailor_merge.materialize.recipe import Recipe, recipe_to_genome
    from gptailor_merge.run.optimize import optimize

    root, base, cands = search_setup
    outcome = optimize(_config(root, base, cands, tmp_path / "run", min_rung_examples=1), progress=False)
    run = outcome.run_dir
    for name in ("config.yaml", "run.json", "journal.jsonl", "best.yaml", "summary.md", "summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "pareto").glob("*.yaml"))
    trials = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    assert [t["index"] for t in trials] == list(range(8))
    assert recipe_to_genome(Recipe.load(run / "best.yaml")).n_kept == 4
    summary = outcome.summary
    assert summary["mergekit_vs_stitch_max_abs_diff"] <= 1e-4
    models = [r["model"] for r in summary["rows"]]
    assert models[:4] == ["base", "cand0", "cand1", "cand2"] and "gptailor-best" in models
    # the winner was chosen on validation against the baseline seeds, and the summary shows the best one
    chosen = summary["selection"]
    assert chosen["source"] in ("search", "seed") and chosen["message"].endswith("returning it")
    assert {"finalist", "seed"} <= {c["kind"] for c in chosen["contenders"]} <= {"finalist", "seed", "search seed"}
    baseline = next(r for r in summary["rows"] if r["model"].startswith("best-baseline ("))
    winner = next(r for r in summary["rows"] if r["model"] == "gptailor-best")
    assert winner["vs_best_baseline"]["baseline"] == chosen["best_baseline"]["name"]
    assert winner["selected_from"] == chosen["source"]
    assert all(s in ("base", "removed") for s in baseline.get("layer_map", ["base"]))
    assert "vs best baseline" in (run / "summary.md").read_text()
    assert "Winner:" in (run / "summary.md").read_text()
    # successive halving, counted from the journal: an evaluated trial climbs rungs upwards and either
    # reaches the top one or stops below it, which saves one full-fidelity evaluation
    s, top = summary["search"], summary["search"]["rungs"][-1]
    climbs = [[r["n_examples"] for r in t["rungs"]] for t in trials if t["status"] == "ok"]
    assert all(c == sorted(set(c)) and set(c) <= set(s["rungs"]) for c in climbs)
    assert s["evaluated"] == len(climbs)
    assert s["full_fidelity_evaluations"] == sum(c[-1] == top for c in climbs) > 0
    assert s["full_fidelity_evaluations_saved"] == sum(c[-1] < top for c in climbs) > 0


def test_killed_run_resumes_without_lost_or_duplicated_trials(search_setup, tmp_path):
    root, base, cands = search_setup
    config_path = tmp_path / "run.yaml"
    cfg = _config(root, base, cands, tmp_path / "run", n_trials=40)
    config_path.write_text(cfg.to_yaml())
    journal = tmp_path / "run" / "journal.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gptailor_merge", "-q", "optimize", "--config", str(config_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    assert 4 <= len(before) < 40, "the kill must land mid-search"
    resumed = subprocess.run([sys.executable, "-m", "gptailor_merge", "-q", "optimize", "--resume",
                              str(tmp_path / "run")], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [t["index"] for t in after] == list(range(40))
    assert [t["genome_id"] for t in after[: len(before)]] == [t["genome_id"] for t in before]
    # the resumed run proposes exactly what an uninterrupted run proposes
    fresh = _config(root, base, cands, tmp_path / "fresh", n_trials=40)
    from gptailor_merge.run.optimize import optimize

    optimize(fresh, progress=False)
    uninterrupted = [json.loads(line)["genome_id"] for line in (tmp_path / "fresh" / "journal.jsonl").read_text().splitlines()]
    assert [t["genome_id"] for t in after] == uninterrupted


def test_resume_refuses_a_different_family_or_target(search_setup, tmp_path):
    from gptailor_merge.run.optimize import optimize

    root, base, cands = search_setup
    cfg = _config(root, base, cands, tmp_path / "run", n_trials=2)
    optimize(cfg, progress=False)
    other = cfg.model_dump(mode="json")
    other["target"] = {"layers": 5}
    with pytest.raises(ResumeError, match="cannot change target.layers"):
        optimize(RunConfig.from_dict(other), resume=tmp_path / "run", requested=RunConfig.from_dict(other), progress=False)
    with pytest.raises(ResumeError, match="not a run folder"):
        optimize(cfg, resume=tmp_path / "nothing", progress=False)
    assert Path(tmp_path / "run" / "best.yaml").is_file()


def _canned_evaluator(chance_z: float, base, candidate, mc_objective: str = "accuracy"):
    from types import SimpleNamespace

    from test_scoring import _gate_tasks

    from gptailor_merge.search.evaluator import Evaluator

    family = SimpleNamespace(n_layers=2, n_candidates=1)
    ev = Evaluator(SimpleNamespace(family=family), None, _gate_tasks(), rungs=(10, 100),
                   chance_z=chance_z, mc_objective=mc_objective)
    ev.score = lambda genome, split, n: base if genome == Genome.base_only(2, 1) else candidate
    return ev


def test_objective_leaves_out_tasks_where_the_dense_base_is_at_chance():
    from test_scoring import _gate_score

    base, cand = _gate_score(near=0.33, clear=0.5, nll=1.0), _gate_score(near=0.1, clear=0.4, nll=2.0)
    ev = _canned_evaluator(2.0, base, cand)
    assert [t.name for t in ev.objective_tasks()] == ["clear", "ppl"]
    assert ev.losses(cand, base) == pytest.approx({"clear": -math.log(0.15 / 0.25), "ppl": 1.0})
    # geometric mean of the counted log ratios: clear log(0.15 / 0.25), ppl 1.0 - 2.0
    assert ev.retention(cand, base) == pytest.approx(math.exp((math.log(0.15 / 0.25) - 1.0) / 2))
    every = _canned_evaluator(0.0, base, cand)
    assert len(every.objective_tasks()) == 3 and set(every.losses(cand, base)) == {"near", "clear", "ppl"}
    # at chance everywhere but the perplexity task: that task alone is the objective
    assert [t.name for t in _canned_evaluator(9.0, base, cand).objective_tasks()] == ["ppl"]


def test_the_likelihood_objective_compares_the_gold_choices_cross_entropy():
    from test_scoring import _gate_score

    base, cand = _gate_score(near=0.33, clear=0.5, nll=1.0), _gate_score(near=0.1, clear=0.4, nll=2.0)
    for score, value in ((base, 0.6), (cand, 0.75)):
        for task in ("near", "clear"):
            score.tasks[task].metrics["choice_nll"] = value
    ev = _canned_evaluator(2.0, base, cand, mc_objective="likelihood")
    # the same counted tasks as the accuracy form; clear loses 0.15 nats, ppl 1 nat
    assert ev.losses(cand, base) == pytest.approx({"clear": 0.15, "ppl": 1.0})
    assert ev.retention(cand, base) == pytest.approx(math.exp(-(0.15 + 1.0) / 2))
    from gptailor_merge.core.config import SearchConfig

    assert SearchConfig().mc_objective == "likelihood"


def test_best_so_far_steps_only_on_full_fidelity_improvements():
    from gptailor_merge.search.journal import RungResult, Trial, best_so_far

    def trial(i: int, n: int, retention: float, status: str = "ok") -> Trial:
        return Trial(i, {}, f"g{i}", (RungResult(n, {}, {}, retention, 0.1),), 1 - retention, 0.1, status)

    trials = [trial(0, 3, 0.99), trial(1, 9, 0.80), trial(2, 9, 0.80), trial(3, 3, 0.95),
              trial(4, 9, 0.85, "cached"), trial(5, 9, 0.90), trial(6, 9, float("nan")), trial(7, 9, 0.89)]
    assert [t.index for t in best_so_far(trials, 9)] == [1, 5]
    assert best_so_far(trials, 27) == []
