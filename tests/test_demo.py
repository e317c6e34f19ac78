"""The demo family: tiny preset builds in-process, loads offline, is deterministic, keeps its
splits apart; the default family (integration) really specialises."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor_merge.demo import (
    DemoFamily,
    build_demo_family,
    default_cache_dir,
    load_demo_family,
    specialisation_table,
)
from gptailor_merge.demo.corpora import load_corpora
from gptailor_merge.demo.evaluate import specialisation_failures
from gptailor_merge.demo.layout import MARKER
from gptailor_merge.demo.presets import get_preset
from gptailor_merge.errors import ConfigError, GptailorError, ModelNotFoundError

SEED = 3


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> DemoFamily:
    return build_demo_family(tmp_path_factory.mktemp("demo") / "tiny", preset="tiny", seed=SEED,
                             progress=False)


def _rows(path):
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_tiny_family_layout_matches_the_api(tiny_family: DemoFamily) -> None:
    root = tiny_family.root
    assert tiny_family.base == root / "base"
    assert tiny_family.candidates == (root / "prose", root / "code", root / "math")
    assert tiny_family.domains == ("prose", "code", "math")
    assert tiny_family.task_names == ("prose_cloze", "code_next_line", "math_answer")
    assert tiny_family.task_file("math_answer", "heldout") == root / "tasks/math_answer.heldout.jsonl"
    assert tiny_family.text_file("code", "search") == root / "text/code.search.jsonl"
    assert load_demo_family(root) == tiny_family
    assert not list(root.parent.glob(".*.tmp")), "the temporary build folder was left behind"


def test_tiny_members_load_offline_with_auto_classes(tiny_family: DemoFamily) -> None:
    shapes = None
    for path in (tiny_family.base, *tiny_family.candidates):
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert model.config.model_type == "llama"
        assert model.config.num_hidden_layers == get_preset("tiny").n_layers
        assert next(model.parameters()).dtype == torch.float32
        assert tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token
        ids = tokenizer("Q: What is 2 + 2? A: 4", return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == tokenizer.bos_token_id
        assert torch.isfinite(model(input_ids=ids).logits).all()
        member_shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert shapes is None or member_shapes == shapes, "members differ in architecture"
        shapes = member_shapes


def test_same_seed_builds_identical_weights(tiny_family: DemoFamily, tmp_path) -> None:
    again = build_demo_family(tmp_path / "again", preset="tiny", seed=SEED, progress=False)
    for a, b in zip((tiny_family.base, *tiny_family.candidates), (again.base, *again.candidates),
                    strict=True):
        ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), f"{a.name} differs between builds"
        assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    for task in tiny_family.task_names:
        assert (tiny_family.task_file(task, "heldout").read_bytes()
                == again.task_file(task, "heldout").read_bytes())


def test_fine_tunes_differ_from_base(tiny_family: DemoFamily) -> None:
    base = load_file(tiny_family.base / "model.safetensors")
    for path in tiny_family.candidates:
        member = load_file(path / "model.safetensors")
        assert any(not torch.equal(base[k], member[k]) for k in base)


@pytest.mark.parametrize("split", ["search", "heldout"])
def test_task_files_have_four_choices_and_a_valid_answer(tiny_family: DemoFamily,
                                                         split: str) -> None:
    for task in tiny_family.task_names:
        rows = _rows(tiny_family.task_file(task, split))
        assert rows, f"{task}.{split} is empty"
        for row in rows:
            assert set(row) == {"context", "choices", "answer"}
            assert isinstance(row["context"], str) and row["context"]
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            assert isinstance(row["answer"], int) and 0 <= row["answer"] < 4


def test_math_answer_marks_the_true_sum() -> None:
    from gptailor_merge.demo.tasks import math_answer

    class _AlwaysFits:
        def __call__(self, *texts: str) -> bool:
            return True

    import random

    rows = list(math_answer(["Q: What is 2 + 3? A: 5"], random.Random(0), _AlwaysFits()))
    assert rows[0]["context"] == "Q: What is 2 + 3? A:"
    assert rows[0]["choices"][rows[0]["answer"]] == " 5"


def test_splits_are_disjoint(tiny_family: DemoFamily) -> None:
    corpora = load_corpora(get_preset("tiny"), SEED, default_cache_dir() / "sources")
    for domain, corpus in corpora.items():
        assert not set(corpus.train) & set(corpus.search)
        assert not set(corpus.train) & set(corpus.heldout)
        assert not set(corpus.search) & set(corpus.heldout)
        for split, others in (("heldout", ("train", "search")), ("search", ("train", "heldout"))):
            other_docs = [d for s in others for d in corpus.split(s)]
            for row in _rows(tiny_family.text_file(domain, split)):
                assert any(row["text"] in d for d in corpus.split(split))
                assert not any(row["text"] in d for d in other_docs), (
                    f"{domain} {split} text also appears in {others}")
    math_train = {p for d in corpora["math"].train for p in d.split("\n")}
    for row in _rows(tiny_family.task_file("math_answer", "heldout")):
        answer = row["choices"][row["answer"]]
        assert row["context"] + answer not in math_train


def test_marker_records_preset_seed_and_table(tiny_family: DemoFamily) -> None:
    manifest = tiny_family.manifest()
    assert (manifest["preset"], manifest["seed"]) == ("tiny", SEED)
    table = manifest["specialisation_heldout_ppl"]
    assert set(table) == {"base", "prose", "code", "math"}
    assert all(set(row) == set(tiny_family.domains) for row in table.values())


def test_complete_family_is_reused_not_rebuilt(tiny_family: DemoFamily) -> None:
    before = (tiny_family.root / MARKER).stat().st_mtime_ns
    again = build_demo_family(tiny_family.root, preset="tiny", seed=SEED, progress=False)
    assert again == tiny_family
    assert (tiny_family.root / MARKER).stat().st_mtime_ns == before


def test_load_incomplete_family_names_the_build_command(tmp_path) -> None:
    (tmp_path / "base").mkdir()
    with pytest.raises(ModelNotFoundError, match="gptailor_merge demo build") as info:
        load_demo_family(tmp_path)
    assert isinstance(info.value, GptailorError) and isinstance(info.value, FileNotFoundError)
    assert MARKER in str(info.value)


def test_unknown_preset_suggests_the_close_one(tmp_path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'tiny'"):
        build_demo_family(tmp_path / "x", preset="tiyn", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_default_family_specialises(default_demo_family: DemoFamily) -> None:
    family = default_demo_family
    assert family.root == default_cache_dir() / "demo-default-seed0"
    assert AutoModelForCausalLM.from_pretrained(family.base).config.num_hidden_layers >= 12
    for task in family.task_names:
        for split in ("search", "heldout"):
            assert len(_rows(family.task_file(task, split))) >= 200
    table = specialisation_table(family, "heldout")
    assert specialisation_failures(table) == [], table
