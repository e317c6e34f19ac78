"""benchmarks/smollm2_family.py stops before any work where its BIG-bench tasks cannot be had."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("smollm2_family", ROOT / "benchmarks" / "smollm2_family.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_bigbench_sdist_stops_the_build_before_it_starts_and_names_the_way_out(
        tmp_path, monkeypatch):
    builder = _builder()
    from gptailor_merge.demo.sources import CorpusUnavailableError

    def unavailable(_sources_dir):
        raise CorpusUnavailableError("No matching distribution found for bigbench==1.0.0")

    monkeypatch.setenv("GPTAILOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(builder, "BIGBENCH_SDIST", SimpleNamespace(filename="bigbench-1.0.0.tar.gz",
                                                                    fetch=unavailable))
    started = []
    monkeypatch.setattr(builder, "build_atomically", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit, match="--without-bigbench") as err:
        builder.build_smollm2_family(tmp_path / "family")
    assert "bigbench-1.0.0.tar.gz" in str(err.value) and "goal_step_wikihow" in str(err.value)
    assert not started and not (tmp_path / "family").exists()
    builder.build_smollm2_family(tmp_path / "family", without_bigbench=True)  # asked for: it builds
    assert len(started) == 1
