"""benchmarks/speed.py: which calls (a) times, how overheads are computed, and a tiny full run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gptailor_merge.genome import Genome

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_bench", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_mergekit_calls_are_spread_over_the_trace_not_its_first_seeds(speed):
    calls = list(range(10, 40, 3))  # 10 calls of one rung
    assert speed.spread(calls, 4) == [10, 19, 28, 37]
    assert speed.spread(calls, 1) == [10]
    assert speed.spread(calls, 0) == calls and speed.spread(calls, 50) == calls


def test_overheads_are_medians_of_per_call_differences_on_the_timed_calls(speed):
    genome = Genome.base_only(4, 1)
    calls = [speed.Call(genome, "search", n) for n in (1, 1, 1, 3)]
    times = {"stitch": [1.0, 2.0, 3.0, 9.0], "stitch_prefix": [0.5, 1.0, 1.5, 4.0],
             "floor": [0.9, 1.9, 2.5, 8.0], "score_floor": [0.95, 1.8, 2.9, 8.5],
             "mergekit": [4.0, 5.0, 12.0]}
    materialize = {"mergekit": [2.0, 3.0, 3.5], "stitch": [0.01, 0.02, 0.5, 0.04]}
    per = speed.summarize(calls, [1, 3], times, [0, 2, 3], [0.0, 0.5, 1.0, 0.25], materialize, [2, 0, 5, 1])
    one = per[1]
    assert one["mergekit_calls"] == 2 and one["calls"] == 3
    assert one["overhead_s"]["mergekit"] == pytest.approx(2.5)  # median of 2.0, 3.0
    assert one["overhead_s"]["stitch"] == pytest.approx((0.05 + 0.1) / 2)  # calls 0 and 2 only
    assert one["overhead_s"]["stitch_minus_forward_floor"] == pytest.approx((0.1 + 0.5) / 2)
    assert one["overhead_ratio"] == pytest.approx(2.5 / 0.075)
    assert one["materialize_ratio"] == pytest.approx(2.5 / 0.255)
    assert one["layers_built_mean"] == pytest.approx(7 / 3) and one["prefix_skip_fraction"] == pytest.approx(0.5)
    three = per[3]
    assert three["overhead_s"]["stitch"] == pytest.approx(0.5) and three["materialize_ratio"] == pytest.approx(3.5 / 0.04)
    times["score_floor"][3] = 9.5  # (b) below its floor: noise, not a ratio
    assert speed.summarize(calls, [3], times, [0, 2, 3], [0] * 4, materialize, [0] * 4)[3]["overhead_ratio"] is None


def test_tiny_synthetic_run_writes_every_target_and_counts_each_new_layer_once(speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = speed.main(["--family", "synthetic", "--trials", "5", "--max-examples", "3",
                         "--max-length", "32", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text())["score_calls"] == result["score_calls"] > 0
    for key in ("overhead_ratio_mergekit_over_stitch", "stitch_over_floor", "materialize_ratio_mergekit_over_stitch"):
        assert set(result[key]) == {str(n) for n in result["rungs"]}
    assert 0.0 <= result["prefix_skip_fraction"] <= 1.0
    n = result["score_calls"]
    assert all(len(v) == n for v in result["times_s"].values() if v is not result["times_s"]["mergekit"])
    assert len(result["times_s"]["mergekit"]) == len(result["mergekit_calls"]) == n  # (a) on every call
    # with a cache larger than the trace, (b) builds each distinct merged or selected layer once
    assert sum(result["layers_built"]) == result["distinct_layers"] > 0
    assert "ovh a/b" in capsys.readouterr().out
