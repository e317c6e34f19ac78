"""gptailor_merge.bench.quality (benchmarks/quality.py) on the tiny demo preset: every row, one held-out set, a complete JSON."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from conftest import yardstick_from_metrics

MEMBERS = ["member-base", "member-prose", "member-code", "member-math"]
METHODS = [*MEMBERS, "reverse", "shortgpt", "angular", "greedy-ppl", "laco", "uniform-merge",
           "gptailor-seeds-only", "gptailor-removal-only", "gptailor-no-seeds", "gptailor-random",
           "gptailor", "shortgpt+repair", "greedy-ppl+repair", "gptailor+repair", "gptailor-repair-pick"]
SEARCHES = ["gptailor-removal-only", "gptailor-no-seeds", "gptailor-random", "gptailor"]


def _load(name: str):
    """A benchmark's module in the bench stage (benchmarks/<name>.py is its command line)."""
    return importlib.import_module(f"gptailor_merge.bench.{name}")


@pytest.fixture(scope="module")
def quality():
    return _load("quality")


def test_quality_benchmark_tiny_demo_writes_every_row_on_the_same_heldout_examples(
        quality, tiny_demo_family, tmp_path_factory, monkeypatch, capsys):
    from gptailor_merge.baselines import core as baselines_core

    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    calls, get_baseline = [], baselines_core.get_baseline
    monkeypatch.setattr(baselines_core, "get_baseline",
                        lambda m: calls.append(baselines_core.canonical_name(m)) or get_baseline(m))
    handed, anytime = {}, quality.anytime
    monkeypatch.setattr(quality, "anytime", lambda *a, **k: handed.update(k["scored"]) or anytime(*a, **k))
    out = tmp_path_factory.mktemp("quality")
    result = quality.main(["--demo-preset", "tiny", "--remove", "0.25", "--trials", "4",
                           "--max-examples", "8", "--heldout-examples", "6", "--threads", "1",
                           "--json", str(out / "q.json"), "--runs-dir", str(out / "runs")])
    saved = json.loads((out / "q.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["complete"] is True and saved["git"]["sha"] and saved["hardware"]["torch"]
    manifest = json.loads((tiny_demo_family.root / "DEMO_FAMILY.json").read_text())
    assert saved["corpus_sha256"] == {d: s["corpus_sha256"] for d, s in manifest["sources"].items()}
    # the weights' own record: equal corpora on another CPU still train other weights
    assert saved["family_build"]["specialisation_heldout_ppl"] == manifest["specialisation_heldout_ppl"]
    assert saved["family_build"]["build_version"] == manifest["build_version"]
    rows = saved["rows"]
    assert [r["method"] for r in rows] == METHODS
    n_layers, total = saved["family"]["n_layers"], saved["family"]["total_params"]
    counts = {t["name"]: t["heldout_used"] for t in saved["tasks"]}
    for r in rows:
        assert {k: v["n"] for k, v in r["tasks"].items()} == counts, r["method"]
        assert {k: len(next(iter(v.values()))) for k, v in r["per_example"].items()} == counts
        pruned = r["method"] not in MEMBERS
        assert r["layers"] == (n_layers - 1 if pruned else n_layers)
        assert (r["params"] < total) if pruned else (r["params"] == total)
        assert r["git_sha"] == saved["git"]
        chance = {t["name"]: t["chance"] for t in saved["tasks"]}
        assert all(chance[t] == 0.25 for t in r["counted_tasks"] if "acc" in r["tasks"][t])
        assert r["retention_sym"] == pytest.approx(
            yardstick_from_metrics(r, rows[0], r["counted_tasks"]), rel=1e-4), r["method"]
        if pruned and r["method"] not in ("angular", "greedy-ppl"):  # one of those is the best
            lo, hi = r["vs_best_baseline"]["ci95"]
            assert lo <= r["vs_best_baseline"]["diff"] <= hi
    by = {r["method"]: r for r in rows}
    assert by["member-base"]["retention_sym"] == 1.0
    # the members are the real fine-tunes: each is best on its own domain's perplexity
    assert by["member-math"]["tasks"]["ppl_math"]["ppl"] < by["member-base"]["tasks"]["ppl_math"]["ppl"]
    for name in SEARCHES:
        r = by[name]
        assert r["trials"] == 4 and r["mergekit_vs_stitch_max_abs_diff"] <= 1e-4
        assert Path(r["recipe"]).is_file() and "vs_seeds_only" in r
        assert r["winner_from_seed"] == (r["winner_origin"] == "seed")
    assert by["gptailor-no-seeds"]["optimizer_trials"] == 4  # no seed at all
    # the searches' baseline seeds are the baseline rows' removals, calibrated once (greedy-ppl once)
    assert calls.count("greedy_ppl") == 1
    seeds = json.loads((out / "runs" / "remove0.25-gptailor" / "baseline_seeds.json").read_text())
    assert seeds["removals"] == [by[m]["removed"] for m in baselines_core.DEFAULT_SEED_METHODS]
    assert all(s in ("base", "removed") for s in by["gptailor-removal-only"]["layer_map"])
    assert by["gptailor"]["anytime"]["points"][-1]["trial"] == by["gptailor"]["winner_trial"]
    assert by["gptailor"]["anytime"]["points"][-1]["retention_sym"] == pytest.approx(
        by["gptailor"]["retention_sym"], abs=1e-6)  # the winner's point is the row's own score,
    from gptailor_merge.core.genome import Genome  # handed over, not scored a second time

    assert list(handed) == [Genome.from_dict(by["gptailor"]["genome"]).genome_id]
    assert "vs_unrepaired" in by["shortgpt+repair"] and isinstance(by["shortgpt+repair"]["repair_kept"], bool)
    choice = by["shortgpt+repair"]["repair"]["validation_choice"]
    assert choice["kept"] is by["shortgpt+repair"]["repair_kept"]
    if choice["kept"]:  # kept only on evidence and with no skill lost
        assert not any(c["lost"] for c in choice["skills"])
        assert (choice["repaired_vs_unrepaired"]["ci95"][0] > 0
                or choice["repaired_vs_unrepaired_objective"]["ci95"][0] > 0)
    assert "vs_unrepaired" in by["gptailor+repair"] and "vs_seeds_only" not in by["gptailor+repair"]
    # the repair-aware pick: the full search's journal replayed (no trial run again), every
    # validation contender repaired and timed, the gptailor run folder left as it was
    pick = by["gptailor-repair-pick"]
    assert pick["trials"] == by["gptailor"]["trials"] and "vs_unrepaired" in pick
    assert all("repair" in c for c in pick["contenders"])
    assert set(pick["fit_seconds_per_contender"]) == {c["name"] for c in pick["contenders"]}
    assert pick["repair_kept"] is any(c["repaired"] for c in pick["contenders"] if c["trial"] == pick["winner_trial"]
                                      and c["genome_id"] == Genome.from_dict(pick["genome"]).genome_id)
    assert (out / "runs" / "remove0.25-gptailor-repair-pick" / "best_model_repaired").is_dir() is pick["repair_kept"]
    assert not (out / "runs" / "remove0.25-gptailor" / "best_model_repaired").exists()
    if not pick["repair_kept"] and pick["genome"] == by["gptailor"]["genome"]:
        assert pick["per_example"] == by["gptailor"]["per_example"]
    # compare.py recomputes an interval from the stored per-example values alone, bitwise
    compare = _load("compare")
    index = [r["method"] for r in rows].index("gptailor")
    again = compare.compare(saved, "gptailor", "gptailor-seeds-only", seed=index)
    assert again["heldout"] == by["gptailor"]["vs_seeds_only"]
    assert again["transfer"] == by["gptailor"]["transfer_vs_seeds_only"]
    mc_counted = [t for t in saved["counted_tasks"] if "acc" in by["gptailor"]["tasks"][t]]
    assert [k["task"] for k in again["skills"]] == mc_counted
    assert all(k["diff"] == pytest.approx(by["gptailor"]["tasks"][k["task"]]["acc"]
                                          - by["gptailor-seeds-only"]["tasks"][k["task"]]["acc"], abs=1e-6)
               for k in again["skills"])
    # a member row is `evaluate` on that member's own folder, on the same held-out examples
    from gptailor_merge.cli.app import main as cli
    from gptailor_merge.demo.layout import default_family_dir

    folder = default_family_dir("tiny", 0) / by["member-math"]["model_path"]
    assert cli(["-q", "evaluate", str(folder), "--tasks", *counts, "--limit", "6",
                "--json", str(out / "math.json")]) == 0
    evaluated = json.loads((out / "math.json").read_text())["tasks"]
    assert evaluated.keys() == by["member-math"]["tasks"].keys()
    for task, metrics in by["member-math"]["tasks"].items():
        assert evaluated[task] == pytest.approx(metrics, abs=1e-6), task
    printed = capsys.readouterr().out
    assert "| method | remove | layers |" in printed
    assert sum(line.startswith((f"| {m} |", f"| {m} (")) for m in METHODS  # "(kept on validation)"
               for line in printed.splitlines()) == len(METHODS)

    # repair_rows.py re-derives the +repair rows from the stored genomes: with this code, bitwise
    repair_rows = _load("repair_rows")
    again = repair_rows.main(["--from", str(out / "q.json"), "--json", str(out / "r.json"), "--threads", "1"])
    assert again["verified"]["shortgpt"]["max_abs_diff"] == 0.0
    assert [r["method"] for r in again["rows"]] == METHODS[-4:-1]
    for row in again["rows"]:
        assert row["per_example"] == by[row["method"]]["per_example"], row["method"]
        assert row["vs_unrepaired"] == by[row["method"]]["vs_unrepaired"]
    saved["rows"][MEMBERS.__len__() + 1]["per_example"]["ppl_prose"]["nll_sum"][0] += 0.5  # shortgpt
    (out / "tampered.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="no longer scores as stored"):
        repair_rows.main(["--from", str(out / "tampered.json"), "--json", str(out / "t.json")])


def _small_run(out: Path) -> list[str]:
    """A seconds-long quality run (full search and baselines only) writing into `out`."""
    return ["--demo-preset", "tiny", "--remove", "0.25", "--trials", "3", "--max-examples", "4",
            "--heldout-examples", "4", "--threads", "1", "--json", str(out / "q.json"),
            "--runs-dir", str(out / "runs"), "--skip-ablations", "--skip-repair"]


def test_quality_benchmark_resume_keeps_finished_rows_and_resumes_the_search(
        quality, tiny_demo_family, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    from gptailor_merge.baselines import core as baselines_core

    calls, get_baseline = [], baselines_core.get_baseline
    monkeypatch.setattr(baselines_core, "get_baseline",
                        lambda m: calls.append(baselines_core.canonical_name(m)) or get_baseline(m))
    out = tmp_path_factory.mktemp("resume")
    argv = _small_run(out)
    first = quality.main(argv)
    assert calls.count("greedy_ppl") == 1  # without the ablations too, the search's seeds reuse the row
    # an interrupted run: the last row never written, its search's summary gone
    cut = {**first, "complete": False, "rows": first["rows"][:-1]}
    (out / "q.json").write_text(json.dumps(cut))
    (out / "runs" / "remove0.25-gptailor" / "summary.json").unlink()
    again = quality.main([*argv, "--resume"])
    assert again["complete"] is True and [r["method"] for r in again["rows"]] == [
        r["method"] for r in first["rows"]]
    keep = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("vs_", "transfer_vs"))}  # noqa: E731
                         for r in rows]
    assert keep(again["rows"][:-1]) == keep(json.loads(json.dumps(first["rows"][:-1])))
    last, was = again["rows"][-1], first["rows"][-1]
    assert last["resumed"] is True and last["removed"] == was["removed"]
    assert last["tasks"] == was["tasks"]  # the journal replayed: the same best recipe and scores
    assert last["search_trial_seconds"] == was["search_trial_seconds"]  # the trials' own time
    # killed before its first trial was journaled: the run folder (config.yaml) still resumes
    (out / "q.json").write_text(json.dumps(cut))
    run = out / "runs" / "remove0.25-gptailor"
    for name in ("journal.jsonl", "summary.json"):
        (run / name).unlink()
    third = quality.main([*argv, "--resume"])
    assert third["complete"] is True and third["rows"][-1]["removed"] == was["removed"]
    with pytest.raises(SystemExit, match="other settings"):
        quality.main([a if a != "3" else "4" for a in argv] + ["--resume"])  # --trials 4
    stale = json.loads((out / "q.json").read_text())
    stale["rows"][0]["git_sha"] = {"sha": "0" * 40, "dirty": False}
    (out / "q.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="another code version"):
        quality.main([*argv, "--resume"])


def test_quality_benchmark_keeps_every_finished_row_when_killed(
        quality, tiny_demo_family, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    out = tmp_path_factory.mktemp("killed")
    argv = _small_run(out)
    score_loaded, calls = quality.score_loaded, []

    def killed_at_the_second_member(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score_loaded(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(quality, "score_loaded", killed_at_the_second_member)
        with pytest.raises(KeyboardInterrupt):
            quality.main(argv)
    saved = json.loads((out / "q.json").read_text())
    assert saved["complete"] is False and [r["method"] for r in saved["rows"]] == ["member-base"]
    first = quality.main([*argv, "--resume"])
    assert first["rows"][0] == saved["rows"][0]  # kept, not scored again
    # a resume killed early keeps the earlier run's rows it had not reached yet
    with monkeypatch.context() as m:
        m.setattr(quality, "baseline_rows", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            quality.main([*argv, "--resume"])
    kept = json.loads((out / "q.json").read_text())["rows"]
    assert kept == json.loads(json.dumps(first["rows"]))


def test_quality_benchmark_smollm2_without_a_built_family_names_the_builder(
        quality, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tmp_path))
    with pytest.raises(SystemExit, match="benchmarks/smollm2_family.py"):
        quality.main(["--family", "smollm2", "--json", str(tmp_path / "q.json")])
    assert not (tmp_path / "q.json").exists()


def test_anytime_thinning_keeps_the_first_and_last_best_so_far_changes(quality):
    items = list(range(10))
    assert quality.thin(items, 0) == items and quality.thin(items, 12) == items
    assert quality.thin(items, 4) == [0, 3, 6, 9]
    assert quality.thin(items, 2) == [0, 9] and quality.thin(items, 1) == [9]


def test_a_run_sharded_with_rows_and_merged_gives_the_unsharded_table(quality, tiny_demo_family, tmp_path_factory,
                                                                       monkeypatch, capsys):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    out = tmp_path_factory.mktemp("shards")
    argv = [a for a in _small_run(out) if a != "--skip-repair"]
    whole = quality.main(argv)
    shard_a = ["gptailor", "gptailor+repair", "shortgpt", "shortgpt+repair"]
    rest = [r["method"] for r in whole["rows"] if r["method"] not in shard_a + ["member-base"]]
    for name, rows in (("a", shard_a), ("b", rest)):
        args = [a if a != str(out / "q.json") else str(out / f"{name}.json") for a in argv]
        args = [a if a != str(out / "runs") else str(out / f"runs-{name}") for a in args]
        quality.main([*args, "--rows", *rows])
    assert [r["method"] for r in json.loads((out / "a.json").read_text())["rows"]] == [
        "member-base", "shortgpt", "gptailor", "shortgpt+repair", "gptailor+repair"]
    capsys.readouterr()
    merged = quality.main(["--merge", str(out / "a.json"), str(out / "b.json"), "--json", str(out / "m.json")])
    printed = capsys.readouterr().out

    def without_seconds(result: dict) -> list[str]:  # the one column that is each process's own clock
        return [line.rsplit("|", 2)[0] for line in quality.table(result["rows"], *quality.stored_tasks(result))
                .splitlines()]

    stored = json.loads((out / "q.json").read_text())
    assert without_seconds(merged) == without_seconds(stored)
    assert quality.footnote(merged) == quality.footnote(stored) and quality.footnote(stored) in printed
    for a, b in zip(merged["rows"], stored["rows"], strict=True):
        assert a["per_example"] == b["per_example"] and a.get("vs_best_baseline") == b.get("vs_best_baseline")
    with pytest.raises(SystemExit, match="in both"):
        quality.main(["--merge", str(out / "a.json"), str(out / "q.json"), "--json", str(out / "x.json")])
    stale = json.loads((out / "b.json").read_text())
    stale["git"] = {"sha": "0" * 40, "dirty": False}
    (out / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="mixes no versions"):
        quality.main(["--merge", str(out / "a.json"), str(out / "stale.json"), "--json", str(out / "x.json")])
    with pytest.raises(SystemExit, match="same shard"):
        quality.main([*argv, "--rows", "gptailor+repair"])


def test_a_runs_own_output_under_results_does_not_mark_the_checkout_dirty(tmp_path):
    import subprocess

    from gptailor_merge.bench.environment import RESULTS_DIR, git_sha

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "one")
    assert git_sha(tmp_path)["dirty"] is False
    (tmp_path / RESULTS_DIR / "run-1").mkdir(parents=True)
    (tmp_path / RESULTS_DIR / "run-1" / "quality.json").write_text("{}")
    assert git_sha(tmp_path)["dirty"] is False  # the run's own output: data
    (tmp_path / "new_module.py").write_text("y = 2\n")
    assert git_sha(tmp_path)["dirty"] is True  # untracked code elsewhere: a dirty checkout
    (tmp_path / "new_module.py").unlink()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_sha(tmp_path)["dirty"] is True


def test_validation_examples_reach_the_pick_and_the_repair_choice_and_no_validation_score_is_paid_twice(
        quality, tiny_demo_family, tmp_path_factory, monkeypatch):
    """`--validation-examples`: the search's pick and the +repair rows' choice read the same number
    of validation examples; each genome is scored on validation once (the +repair rows read the
    search's scores), and a resumed run reads them all back."""
    from gptailor_merge.search.evaluator import Evaluator

    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    out = tmp_path_factory.mktemp("validation-n")
    argv = [a for a in _small_run(out) if a != "--skip-repair"] + [
        "--validation-examples", "5", "--rows", "shortgpt", "gptailor", "shortgpt+repair", "gptailor+repair"]
    scored, score = [], Evaluator.score
    monkeypatch.setattr(Evaluator, "score", lambda self, g, split, n: (
        scored.append((g.genome_id, split, n)) or score(self, g, split, n)))
    first = quality.main(argv)
    summary = json.loads((out / "runs" / "remove0.25-gptailor" / "summary.json").read_text())
    assert summary["selection"]["validation_examples"] == 5
    repaired = [r for r in first["rows"] if r["method"].endswith("+repair")]
    assert [r["repair"]["validation_choice"]["validation_examples"] for r in repaired] == [5, 5]
    validated = [s for s in scored if s[1] == "validation"]
    assert validated and all(n == 5 for _, _, n in validated)
    assert len(validated) == len(set(validated))  # the reference and every genome: once

    cut = {**first, "complete": False, "rows": [r for r in first["rows"] if r not in repaired]}
    (out / "q.json").write_text(json.dumps(cut))
    scored.clear()
    again = quality.main([*argv, "--resume"])
    assert not [s for s in scored if s[1] == "validation"]  # every validation score read from the files
    choice = lambda r: ({k: v for k, v in r["repair"]["validation_choice"].items()  # noqa: E731
                         if not k.endswith("_seconds")}, r["repair_kept"])
    assert [choice(r) for r in again["rows"] if r["method"].endswith("+repair")] == [choice(r) for r in repaired]
    with pytest.raises(SystemExit, match="other settings"):
        quality.main([a if a != "5" else "6" for a in argv] + ["--resume"])


@pytest.mark.parametrize("flag", ["--validation-examples", "--heldout-examples", "--trials", "--repair-texts"])
def test_a_count_of_zero_is_a_usage_error_naming_the_flags(quality, flag, capsys):
    """0 is not "every example" (that is the flag left out): argparse's one-line error, not a
    ConfigError traceback from the run config."""
    with pytest.raises(SystemExit) as exc:
        quality.parse_args([flag, "0"])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
