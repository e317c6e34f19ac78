"""Shared fixtures: tiny in-process families (seconds), offline Hub, fixed seeds."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add contention
os.environ.setdefault("OMP_NUM_THREADS", "1")  # and for the subprocesses tests start


@pytest.fixture(scope="session")
def tiny_family_paths(tmp_path_factory):
    """arch -> (base path, candidate paths) for tiny 4-layer Llama / Mistral / Qwen2 families."""
    from gptailor_merge.synthetic import make_synthetic_family

    root = tmp_path_factory.mktemp("tiny_families")
    return {
        arch: make_synthetic_family(root / arch, arch=arch, n_layers=4, seed=1)
        for arch in ("llama", "mistral", "qwen2")
    }


@pytest.fixture(scope="session")
def llama_family(tiny_family_paths):
    from gptailor_merge.family import Family

    base, candidates = tiny_family_paths["llama"]
    return Family.load(base, candidates)


@pytest.fixture(scope="session")
def mistral_family(tiny_family_paths):
    from gptailor_merge.family import Family

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
