"""gptailor_merge.bench.speed (benchmarks/speed.py): which calls (a) times, the trace totals, the lean recipes, and a tiny full run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptailor_merge.core.genome import Genome


@pytest.fixture(scope="module")
def speed():
    from gptailor_merge.bench import speed

    return speed


def test_mergekit_calls_are_spread_over_the_trace_not_its_first_seeds(speed):
    calls = list(range(10, 40, 3))  # 10 calls of one rung
    assert speed.spread(calls, 4) == [10, 19, 28, 37]
    assert speed.spread(calls, 1) == [10]
    assert speed.spread(calls, 0) == calls and speed.spread(calls, 50) == calls


def test_per_rung_detail_counts_mergekit_materializations_only_where_it_merged(speed):
    genome = Genome.base_only(4, 1)
    calls = [speed.Call(genome, "search", n) for n in (1, 1, 1, 3)]
    times = {"stitch": [1.0, 2.0, 3.0, 9.0], "stitch_prefix": [0.5, 1.0, 1.5, 4.0],
             "stitch_prefix_shared": [0.25, 0.5, 0.75, 2.0],
             "floor": [0.9, 1.9, 2.5, 8.0], "score_floor": [0.95, 1.8, 2.9, 8.5],
             "mergekit": [4.0, 5.0, 12.0]}
    materialize = {"mergekit": [2.0, 3.0, 0.0], "stitch": [0.01, 0.02, 0.5, 0.04]}
    per = speed.summarize(calls, [1, 3], times, [0, 2, 3], [0.0, 0.5, 1.0, 0.25], materialize, [2, 0, 5, 1])
    one, three = per[1], per[3]
    assert one["mergekit_calls"] == 2 and one["calls"] == 3 and one["mergekit_materialized"] == 2
    assert one["median_s"]["mergekit"] == pytest.approx(4.5) and one["materialize_s"]["mergekit"] == pytest.approx(2.5)
    assert one["mergekit_over_stitch"] == pytest.approx(4.5 / 2.0)
    assert one["layers_built_mean"] == pytest.approx(7 / 3) and one["prefix_skip_fraction"] == pytest.approx(0.5)
    assert three["mergekit_materialized"] == 0 and three["materialize_s"]["mergekit"] is None  # reused
    assert "overhead_ratio" not in one, "no ratio over a near-zero difference"


def test_trace_ratios_are_whole_trace_totals_and_need_mergekit_on_every_call(speed):
    times = {"stitch": [1.0, 2.0, 3.0], "stitch_prefix": [0.5, 1.0, 1.5],
             "stitch_prefix_shared": [0.25, 0.5, 0.75], "floor": [1, 1, 1],
             "score_floor": [1, 1, 1], "mergekit": [4.0, 3.0, 5.0]}
    totals = speed.trace_totals(times, 3, [0, 1, 2])
    assert totals["seconds"]["mergekit"] == 12.0 and totals["seconds"]["stitch"] == 6.0
    assert totals["trace_ratio_mergekit_over_stitch"] == pytest.approx(2.0)
    assert totals["trace_ratio_mergekit_over_stitch_prefix"] == pytest.approx(4.0)
    assert totals["trace_ratio_stitch_prefix_over_shared"] == pytest.approx(2.0)
    partial = speed.trace_totals({**times, "mergekit": [4.0]}, 3, [1])
    assert partial["trace_ratio_mergekit_over_stitch"] is None and partial["seconds"]["mergekit"] is None


def test_lean_recipe_lists_only_used_sources_and_mergekit_gives_the_same_model(tmp_path):
    from safetensors.torch import load_file

    from gptailor_merge.core.genome import LayerSpec
    from gptailor_merge.demo.synthetic import make_synthetic_family
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
    from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe, lean_recipe

    base, cands = make_synthetic_family(tmp_path / "fam", n_layers=4, n_candidates=3, seed=1)
    refs = FamilyRefs.of(Family.load(base, cands))
    # merges at the first and the last kept layer: the LM-head case of docs/ARCHITECTURE.md ("Recipe")
    genome = Genome(4, 3, (LayerSpec(0, (0, 2), lam=0.7), LayerSpec(1, ()), LayerSpec(3, (1,))))
    full = genome_to_recipe(genome, refs)
    lean = lean_recipe(full, refs.base)
    lean.merge_config()
    for s in lean.data["slices"]:
        weights = [(src.get("parameters") or {}).get("weight", 1.0) for src in s["sources"][1:]]
        assert all(w != 0.0 for w in weights) and s["sources"][0]["model"] == refs.base
    assert sum(len(s["sources"]) for s in lean.data["slices"]) < sum(len(s["sources"]) for s in full.data["slices"])
    models = [materialize_with_mergekit(r, tmp_path / name) for name, r in (("full", full), ("lean", lean))]
    a, b = (load_file(m / "model.safetensors") for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert torch.equal(b["lm_head.weight"], load_file(base / "model.safetensors")["lm_head.weight"])


def test_tiny_synthetic_run_writes_every_target_and_counts_each_new_layer_once(speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = speed.main(["--family", "synthetic", "--trials", "5", "--max-examples", "3",
                         "--max-length", "32", "--threads", "1", "--json", str(out), "--throughput"])
    assert json.loads(out.read_text())["score_calls"] == result["score_calls"] > 0
    for key in ("time_ratio_mergekit_over_stitch", "stitch_over_floor"):
        assert set(result[key]) == {str(n) for n in result["rungs"]}
    assert 0.0 <= result["prefix_skip_fraction"] <= 1.0
    n = result["score_calls"]
    assert all(len(v) == n for v in result["times_s"].values() if v is not result["times_s"]["mergekit"])
    assert len(result["times_s"]["mergekit"]) == len(result["mergekit_calls"]) == n  # (a) on every call
    totals = result["trace_seconds"]
    assert result["trace_ratio_mergekit_over_stitch"] == pytest.approx(totals["mergekit"] / totals["stitch"])
    assert result["trace_ratio_mergekit_over_stitch_prefix"] == pytest.approx(totals["mergekit"] / totals["stitch_prefix"])
    assert "overhead_ratio_mergekit_over_stitch" not in result
    # (a) materializes once per trial (and the dense reference once), not once per call
    assert result["mergekit_materializations"] == result["expected_materializations"] < n
    assert result["lean_recipe_check"]["genomes"] and result["lean_recipe_check"]["max_abs_diff"] == 0.0
    # with a cache larger than the trace, (b) builds each distinct merged or selected layer once
    assert sum(result["layers_built"]) == result["distinct_layers"] > 0
    assert result["trace_ratio_stitch_prefix_over_shared"] == pytest.approx(
        totals["stitch_prefix"] / totals["stitch_prefix_shared"])
    section = result["throughput"]
    (mc,) = [row for row in section["tasks"].values() if "per_choice_s" in row]
    assert mc["argmax_differences"] == 0 and mc["max_abs_loglik_diff"] < 1e-4
    assert mc["counts"]["shared"]["tokens"] < mc["counts"]["per_choice"]["tokens"]
    assert section["floor"]["tokens_per_s_full_logits"] > 0 and section["heldout_row_speedup"] > 0
    out = capsys.readouterr().out
    assert "a/b =" in out and "c/d =" in out and "| shared |" in out


def test_gpu_check_reads_its_knobs_and_refuses_7b_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptailor_merge.bench import gpu_check

    monkeypatch.setenv("GPU_CHECK_TRIALS", "5")
    monkeypatch.setenv("OUT", "/tmp/out-folder")
    args = gpu_check.parse_args(["--shape", "7b"])
    assert (args.trials, args.json) == (5, Path("/tmp/out-folder/gpu_check.json"))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU; --shape tiny"):
            gpu_check.setup(args, gpu_check.Clock(60))
