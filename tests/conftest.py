"""Shared fixtures: tiny in-process families (seconds), offline Hub, fixed seeds."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add contention
os.environ.setdefault("OMP_NUM_THREADS", "1")  # and for the subprocesses tests start


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The fast loop, `pytest -m "not integration"`, must never start the default demo build
    (minutes): a test that uses `default_demo_family` without the integration mark is an error."""
    unmarked = [item.nodeid for item in items
                if "default_demo_family" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError(f"mark these @pytest.mark.integration (they use default_demo_family): {unmarked}")


@pytest.fixture(scope="session")
def tiny_family_paths(tmp_path_factory):
    """arch -> (base path, candidate paths) for tiny 4-layer Llama / Mistral / Qwen2 families."""
    from gptailor_merge.demo.synthetic import make_synthetic_family

    root = tmp_path_factory.mktemp("tiny_families")
    return {
        arch: make_synthetic_family(root / arch, arch=arch, n_layers=4, seed=1)
        for arch in ("llama", "mistral", "qwen2")
    }


@pytest.fixture(scope="session")
def llama_family(tiny_family_paths):
    from gptailor_merge.family.family import Family

    base, candidates = tiny_family_paths["llama"]
    return Family.load(base, candidates)


@pytest.fixture(scope="session")
def mistral_family(tiny_family_paths):
    from gptailor_merge.family.family import Family

    base, candidates = tiny_family_paths["mistral"]
    return Family.load(base, candidates)


WORDS = "the cat dog sat ran on mat log fox jumps over lazy quick brown".split()


def write_word_tasks(root) -> None:
    """Seeded random-word tasks under `root`: mc.jsonl (40 four-way choices) and txt.jsonl (30 texts)."""
    import json
    import random

    rng = random.Random(0)
    with open(root / "mc.jsonl", "w") as f:
        for _ in range(40):
            ctx = " ".join(rng.choice(WORDS) for _ in range(6))
            choices = [" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(4)]
            f.write(json.dumps({"context": ctx, "choices": choices, "answer": rng.randrange(4)}) + "\n")
    with open(root / "txt.jsonl", "w") as f:
        for _ in range(30):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(16))}) + "\n")


def write_mc_task(path, n_rows: int, seed: int) -> None:
    """A seeded four-way multiple-choice JSONL task of random words at `path`."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_rows):
            choices = [" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(4)]
            f.write(json.dumps({"context": " ".join(rng.choice(WORDS) for _ in range(6)),
                                "choices": choices, "answer": rng.randrange(4)}) + "\n")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished 12-trial run (held-out rows, best_model, report) on a 6-layer synthetic family
    with named members and three tasks, shared by the report and hub tests, which only read it
    (a report is rewritten in place; nothing else in the folder changes)."""
    import json
    import random

    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.demo.synthetic import make_synthetic_family
    from gptailor_merge.run.optimize import optimize

    root = tmp_path_factory.mktemp("tiny_run")
    base, cands = make_synthetic_family(root / "fam", n_layers=6, seed=3)
    write_mc_task(root / "mc_a.jsonl", 30, seed=0)
    write_mc_task(root / "mc_b.jsonl", 30, seed=1)
    rng = random.Random(2)
    with open(root / "txt.jsonl", "w") as f:
        for _ in range(24):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(16))}) + "\n")
    config = RunConfig.from_dict({
        "family": {"base": str(base), "candidates": [str(c) for c in cands],
                   "names": ["llama", "chat", "math", "code"]},
        "target": {"layers": 4},
        "tasks": [str(root / "mc_a.jsonl"), str(root / "txt.jsonl"), str(root / "mc_b.jsonl")],
        "search": {"n_trials": 12, "max_examples": 9},
        "eval": {"batch_size": 8, "max_length": 64, "heldout_examples": 6},
        "out_dir": str(root / "run"),
    })
    return optimize(config, progress=False).run_dir


@pytest.fixture(scope="session")
def tiny_demo_family(tmp_path_factory):
    """The tiny demo family (seed 0, seconds to build) in a cache folder of its own, built once per
    run. Tests that run the demo config on it point $GPTAILOR_CACHE at `root.parent`. That cache's
    sources/ is the real one, so the Wikipedia sample is fetched at most once."""
    from gptailor_merge.demo import build_demo_family, default_cache_dir

    sources = default_cache_dir() / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    cache = tmp_path_factory.mktemp("cache")
    (cache / "sources").symlink_to(sources, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTAILOR_CACHE", str(cache))
        return build_demo_family(preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def default_demo_family():
    """The default (12-layer) demo family under $GPTAILOR_CACHE: built once per run, or reused from
    the cache. It trains on every core: a test run is serial, so nothing else runs meanwhile (on a
    machine shared with other jobs a second thread can slow each step instead: set
    GPTAILOR_BUILD_THREADS=1 there)."""
    from gptailor_merge.demo import build_demo_family

    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("GPTAILOR_BUILD_THREADS", os.cpu_count() or 1)))
    try:
        return build_demo_family(preset="default", seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)


def yardstick_from_metrics(row: dict, reference: dict, counted, chance: float = 0.25,
                           metric: str = "acc") -> float:
    """retention_sym's definition written out again from a row's own held-out metrics, to check the
    number the tools report: exp(mean over counted tasks of nll_ref - nll (perplexity) or
    log(max(acc - c, 0.01) / (acc_ref - c)) (multiple choice))."""
    import math

    logs = []
    for task in counted:
        scores, ref = row["tasks"][task], reference["tasks"][task]
        if "nll" in scores:
            logs.append(ref["nll"] - scores["nll"])
        else:
            logs.append(math.log(max(scores[metric] - chance, 0.01) / (ref[metric] - chance)))
    return math.exp(sum(logs) / len(logs))
