"""Shared-context multiple choice on the families' own task files: the same argmax (acc and
acc_norm) on every held-out example and log-likelihoods within 1e-4 nats of one sequence per choice.
The demo family runs in the suite; SmolLM2's (a benchmark asset, `benchmarks/smollm2_family.py`)
where its cache folder is built, else skipped."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor_merge.bench.environment import SMOLLM2_MARKER, smollm2_root
from gptailor_merge.bench.throughput import compare_mc
from gptailor_merge.scoring import load_task


def _check_task_files(model_dir, task_files):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for path in task_files:
        task = load_task(path)
        if task.kind != "multiple_choice":
            continue
        result = compare_mc(model, tokenizer, task.examples("heldout"), batch_size=16, max_length=256)
        assert result["argmax_differences"] == 0, (path.name, result)
        assert result["max_abs_loglik_diff"] <= 1e-4, (path.name, result)


@pytest.mark.integration
def test_demo_family_tasks_score_the_same_with_a_shared_context(default_demo_family):
    family = default_demo_family
    _check_task_files(family.base, [family.task_file(t, "heldout") for t in family.task_names])


def test_smollm2_family_tasks_score_the_same_with_a_shared_context():
    root = smollm2_root()
    if not (root / SMOLLM2_MARKER).is_file():
        pytest.skip("the SmolLM2 family is not built here (python benchmarks/smollm2_family.py)")
    _check_task_files(root / "base", sorted((root / "tasks").glob("*.heldout.jsonl")))
