"""Specification of scoring tasks: JSONL and dataset parsing, splits, fidelity prefixes, registry."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from gptailor_merge.core.errors import TaskError  # noqa: E402
from gptailor_merge.scoring.examples import ChoiceExample, TextExample, read_jsonl  # noqa: E402
from gptailor_merge.scoring.tasks import TASKS, load_task, register_task_dir  # noqa: E402


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def mc_rows(n: int, n_choices: int = 3) -> list[dict]:
    return [{"context": f"question {i}", "choices": [f"c{j}" for j in range(n_choices)],
             "answer": i % n_choices} for i in range(n)]


def test_bad_json_line_raises_task_error_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", [*mc_rows(2), "{not json"])
    with pytest.raises(TaskError, match=r"arc\.jsonl:3: invalid JSON"):
        load_task(path)


def test_missing_field_raises_task_error_with_file_and_line(tmp_path):
    rows = mc_rows(3)
    del rows[1]["choices"]
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    with pytest.raises(TaskError, match=r"arc\.jsonl:2: missing field 'choices'"):
        load_task(path)


def test_answer_out_of_range_is_an_error_not_a_silent_zero(tmp_path):
    rows = mc_rows(3)
    rows[2]["answer"] = 3
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    with pytest.raises(TaskError, match=r"arc\.jsonl:3: 'answer' is 3, out of range for 3 choices"):
        load_task(path)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [*mc_rows(1), "", {"context": "x", "choices": ["a"],
                                                                 "answer": 0}])
    with pytest.raises(TaskError, match=r"t\.jsonl:3: 'choices' must be a list of at least 2"):
        read_jsonl(path)


def test_lm_eval_field_names_are_accepted(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"query": "q0", "choices": ["a", "b"], "gold": 1},
        {"question": "q1", "choices": ["a", "b", "c"], "label": "2"},
        {"question": "q2", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"},
        {"ctx": "q3", "endings": ["e0", "e1", "e2", "e3"], "label": 0},
    ])
    assert read_jsonl(path) == (
        ChoiceExample("q0", ("a", "b"), 1),
        ChoiceExample("q1", ("a", "b", "c"), 2),
        ChoiceExample("q2", ("x", "y"), 1),
        ChoiceExample("q3", ("e0", "e1", "e2", "e3"), 0),
    )


def test_single_file_split_is_disjoint_deterministic_and_seeded(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", mc_rows(11))
    task = load_task(path, seed=0)
    assert task.name == "arc" and task.kind == "multiple_choice"
    assert task.search and task.validation and task.heldout
    splits = [set(task.search), set(task.validation), set(task.heldout)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert splits[0] | splits[1] | splits[2] == set(read_jsonl(path))
    assert load_task(path, seed=0) == task
    assert task.chance == pytest.approx(1 / 3)


def test_the_split_of_an_example_depends_on_its_content_never_on_the_seed(tmp_path):
    rows = mc_rows(40)
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    by_seed = [load_task(path, seed=seed) for seed in (0, 1, 5)]
    for task in by_seed[1:]:
        for split in ("search", "validation", "heldout"):  # same members
            assert set(getattr(task, split)) == set(getattr(by_seed[0], split))
    assert by_seed[1].search != by_seed[0].search  # the seed orders them
    # an example keeps its split when other examples are added or removed
    fewer = load_task(write_jsonl(tmp_path / "fewer.jsonl", rows[:25]), seed=3)
    for split in ("search", "validation", "heldout"):
        assert set(getattr(fewer, split)) <= set(getattr(by_seed[0], split))


def test_sibling_search_and_heldout_files_are_used_as_splits(tmp_path):
    search = write_jsonl(tmp_path / "qa.search.jsonl", mc_rows(4))
    write_jsonl(tmp_path / "qa.heldout.jsonl", mc_rows(6, n_choices=2)[4:])
    for spec in (tmp_path / "qa.jsonl", search):
        write_jsonl(tmp_path / "qa.jsonl", mc_rows(1))  # ignored when the pair exists
        task = load_task(spec)
        assert task.name == "qa"
        assert set(task.search) | set(task.validation) == set(read_jsonl(search))  # carved from search
        assert task.search and task.validation and len(task.heldout) == 2
    assert task.chance == pytest.approx((4 / 3 + 2 / 2) / 6)


def test_validation_is_carved_from_search_by_content_and_leaves_heldout_as_it_was(tmp_path):
    from gptailor_merge.scoring.task import carve_validation, split_examples

    examples = read_jsonl(write_jsonl(tmp_path / "arc.jsonl", mc_rows(60)))
    two_way = split_examples(examples, seed=0)
    task = load_task(tmp_path / "arc.jsonl", seed=0)
    assert task.heldout == two_way[1]  # held-out is exactly the two-way split's
    assert set(task.search) | set(task.validation) == set(two_way[0])
    assert 10 <= len(task.validation) <= 50  # about half of the search examples
    # a search example's fate depends on its content alone: carving a subset keeps each in place
    kept, validation = carve_validation(two_way[0][:20])
    assert set(kept) <= set(task.search) and set(validation) <= set(task.validation)
    # the validation split keeps the seeded order (a prefix of a larger budget)
    other = load_task(tmp_path / "arc.jsonl", seed=4)
    assert set(other.validation) == set(task.validation) and other.validation != task.validation


def test_a_task_built_in_code_without_validation_says_so_when_scored_there():
    from gptailor_merge.scoring.task import make_task

    task = make_task("t", [TextExample("a"), TextExample("b")], [TextExample("c")], "t")
    with pytest.raises(TaskError, match="no validation examples"):
        task.examples("validation")


def test_low_budget_examples_are_a_prefix_of_high_budget_ones(tmp_path):
    task = load_task(write_jsonl(tmp_path / "arc.jsonl", mc_rows(40)), seed=3)
    for split in ("search", "validation", "heldout"):
        assert task.examples(split, 5) == task.examples(split, 12)[:5]
        assert task.examples(split, 12) == task.examples(split)[:12]
        assert task.examples(split, 1000) == task.examples(split)
    with pytest.raises(TaskError, match="unknown split 'test'"):
        task.examples("test")
    with pytest.raises(TaskError, match="n_examples must be a positive integer"):
        task.examples("search", 0)


def test_perplexity_jsonl_is_a_perplexity_task_with_zero_chance(tmp_path):
    path = write_jsonl(tmp_path / "wiki.jsonl", [{"text": f"line {i}"} for i in range(4)])
    task = load_task(path)
    assert task.kind == "perplexity" and task.chance == 0.0
    assert all(isinstance(ex, TextExample) for ex in task.search + task.heldout)


def test_too_few_examples_for_a_split_raise(tmp_path):
    with pytest.raises(TaskError, match="empty search split"):
        load_task(write_jsonl(tmp_path / "one.jsonl", mc_rows(1)))


def test_register_task_dir_registers_tasks_and_perplexity_domains(tmp_path):
    write_jsonl(tmp_path / "tasks/unit_reg_mc.search.jsonl", mc_rows(3))
    write_jsonl(tmp_path / "tasks/unit_reg_mc.heldout.jsonl", mc_rows(5)[3:])
    write_jsonl(tmp_path / "text/unit_reg_code.search.jsonl", [{"text": "def f(): pass"},
                                                               {"text": "y = 2"}])
    write_jsonl(tmp_path / "text/unit_reg_code.heldout.jsonl", [{"text": "x = 1"}])
    names = register_task_dir(tmp_path)
    assert names == ["unit_reg_mc", "ppl_unit_reg_code"]
    assert register_task_dir(tmp_path) == names  # same files: a no-op
    task = load_task("unit_reg_mc", seed=0)
    assert task.kind == "multiple_choice" and len(task.search) + len(task.validation) == 3
    assert len(task.heldout) == 2
    assert load_task("ppl_unit_reg_code").heldout == (TextExample("x = 1"),)
    assert "unit_reg_mc" in TASKS


def test_other_files_under_a_registered_name_fail_unless_replacing(tmp_path):
    for folder, n in (("a", 3), ("b", 4)):
        write_jsonl(tmp_path / folder / "tasks/unit_rebind.search.jsonl", mc_rows(n))
        write_jsonl(tmp_path / folder / "tasks/unit_rebind.heldout.jsonl", mc_rows(2))
    register_task_dir(tmp_path / "a")
    with pytest.raises(TaskError, match="already registered from other files"):
        register_task_dir(tmp_path / "b")
    def n_search(task):  # search and the validation carved from it: the search file's rows
        return len(task.search) + len(task.validation)

    assert n_search(load_task("unit_rebind")) == 3
    register_task_dir(tmp_path / "b", replace=True)  # e.g. a demo family of another preset
    assert n_search(load_task("unit_rebind")) == 4


def test_unknown_task_name_suggests_a_close_match_and_lists_known(tmp_path):
    write_jsonl(tmp_path / "tasks/unit_hint_task.search.jsonl", mc_rows(2))
    write_jsonl(tmp_path / "tasks/unit_hint_task.heldout.jsonl", mc_rows(2))
    register_task_dir(tmp_path)
    with pytest.raises(TaskError, match=r"Did you mean 'unit_hint_task'\?.*Known: .*unit_hint_task"):
        load_task("unit_hint_tsak")
    with pytest.raises(TaskError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_disk_dataset_spec_uses_search_and_heldout_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = mc_rows(6)
    splits = datasets.DatasetDict({
        "search": datasets.Dataset.from_list(rows[:2]),
        "heldout": datasets.Dataset.from_list(rows[2:]),
    })
    splits.save_to_disk(str(tmp_path / "mmlu_mini"))
    task = load_task(f"disk:{tmp_path / 'mmlu_mini'}")
    assert task.name == "mmlu_mini" and len(task.search) + len(task.validation) == 2
    assert len(task.heldout) == 4
    single = datasets.Dataset.from_list([{"query": r["context"], "choices": r["choices"],
                                          "gold": r["answer"]} for r in rows])
    single.save_to_disk(str(tmp_path / "single"))
    task = load_task(f"disk:{tmp_path / 'single'}", seed=0)
    assert (set(task.search) | set(task.validation) | set(task.heldout)
            == set(read_jsonl(write_jsonl(tmp_path / "r.jsonl", rows))))


def test_hf_dataset_spec_loads_a_local_folder_offline(tmp_path):
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "hfdata/train.jsonl", mc_rows(8))
    task = load_task(f"hf:{tmp_path / 'hfdata'}:train", seed=0)
    assert task.name == "hfdata" and len(task.search) + len(task.validation) + len(task.heldout) == 8
    assert task.search and task.heldout and not set(task.search) & set(task.heldout)
    with pytest.raises(TaskError, match="cannot load dataset"):
        load_task(f"hf:{tmp_path / 'missing'}:train")
    with pytest.raises(TaskError, match="bad dataset spec"):
        load_task("hf:only_name")
