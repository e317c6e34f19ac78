"""benchmarks/quality.py on the tiny demo preset: every row, one held-out set, a complete JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import mean_task_retention, task_retention

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["dense-base", "ft-prose", "ft-code", "ft-math", "reverse", "shortgpt", "angular",
           "greedy-ppl", "laco", "gptailor-removal-only", "gptailor"]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_tiny_demo_writes_every_row_on_the_same_heldout_examples(
        quality, tiny_demo_family, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    out = tmp_path_factory.mktemp("quality")
    result = quality.main(["--demo-preset", "tiny", "--remove", "0.25", "--trials", "4",
                           "--max-examples", "8", "--heldout-examples", "6", "--threads", "1",
                           "--json", str(out / "q.json"), "--runs-dir", str(out / "runs")])
    saved = json.loads((out / "q.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["complete"] is True and saved["git"]["sha"] and saved["hardware"]["torch"]
    rows = saved["rows"]
    assert [r["method"] for r in rows] == METHODS
    n_layers, total = saved["family"]["n_layers"], saved["family"]["total_params"]
    counts = {t["name"]: t["heldout_used"] for t in saved["tasks"]}
    for r in rows:
        assert {k: v["n"] for k, v in r["tasks"].items()} == counts, r["method"]
        pruned = r["method"] not in METHODS[:4]
        assert r["layers"] == (n_layers - 1 if pruned else n_layers)
        assert (r["params"] < total) if pruned else (r["params"] == total)
        assert r["trials"] == (4 if r["method"].startswith("gptailor") else None)
    # every row against the dense base's held-out scores, and against the best fine-tune's
    best_dense = max(rows[1:4], key=lambda r: r["retention"])
    for r in rows:
        per_task = task_retention(r, rows[0])
        assert r["retention_per_task"] == pytest.approx(per_task, abs=1e-5), r["method"]
        assert r["retention"] == pytest.approx(mean_task_retention(r, rows[0]), abs=1e-5)
        assert r["retention_vs_best_dense"] == pytest.approx(mean_task_retention(r, best_dense), abs=1e-5)
    tailored = [r for r in rows if r["method"].startswith("gptailor")]
    assert all(r["optimize_heldout_max_abs_diff"] <= 1e-4 for r in tailored)
    assert all(Path(r["run_dir"], "best.yaml").is_file() for r in tailored)
    assert all(s == "base" or s == "removed" for s in tailored[0]["layer_map"])  # removal only
    printed = capsys.readouterr().out
    assert "| method | remove | layers | params |" in printed
    assert sum(line.startswith(f"| {m} |") for m in METHODS for line in printed.splitlines()) == 11


def test_quality_benchmark_resume_keeps_finished_rows_and_resumes_the_search(
        quality, tiny_demo_family, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tiny_demo_family.root.parent))
    out = tmp_path_factory.mktemp("resume")
    argv = ["--demo-preset", "tiny", "--remove", "0.25", "--trials", "3", "--max-examples", "4",
            "--heldout-examples", "4", "--threads", "1", "--json", str(out / "q.json"),
            "--runs-dir", str(out / "runs"), "--lean"]
    first = quality.main(argv)
    assert first["rows"][-1]["mergekit_vs_stitch_max_abs_diff"] is None  # lean: no own summary
    # an interrupted run: the last row never written, its search's summary gone
    cut = {**first, "complete": False, "rows": first["rows"][:-1]}
    (out / "q.json").write_text(json.dumps(cut))
    (out / "runs" / "remove0.25-gptailor" / "summary.json").unlink()
    again = quality.main([*argv, "--resume"])
    assert [r["method"] for r in again["rows"]] == METHODS and again["complete"] is True
    assert again["rows"][:-1] == json.loads(json.dumps(first["rows"][:-1]))  # kept as they were
    last, was = again["rows"][-1], first["rows"][-1]
    assert last["resumed"] is True and last["removed"] == was["removed"]
    assert last["tasks"] == was["tasks"]  # the journal replayed: the same best recipe and scores
    with pytest.raises(SystemExit, match="other settings"):
        quality.main([a if a != "3" else "4" for a in argv] + ["--resume"])  # --trials 4


def test_quality_benchmark_smollm2_without_a_built_family_names_the_builder(
        quality, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTAILOR_CACHE", str(tmp_path))
    with pytest.raises(SystemExit, match="benchmarks/smollm2_family.py"):
        quality.main(["--family", "smollm2", "--json", str(tmp_path / "q.json")])
    assert not (tmp_path / "q.json").exists()
