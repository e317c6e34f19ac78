"""The yardstick: symmetric retention (geometric mean of log ratios), chance gating, paired intervals."""

import math

import pytest

from gptailor_merge.scoring import Score, TaskScore, counted_tasks, symmetric_retention
from gptailor_merge.scoring.examples import ChoiceExample, TextExample
from gptailor_merge.scoring.intervals import paired_bootstrap
from gptailor_merge.scoring.objectives import ABOVE_CHANCE_FLOOR
from gptailor_merge.scoring.task import make_task

FOUR = [ChoiceExample("c", ("a", "b", "c", "d"), 0)] * 4  # chance 0.25
TEXT = [TextExample("x")]


def _tasks():
    return [make_task("prose", TEXT, TEXT, "t"), make_task("math", TEXT, TEXT, "t"),
            make_task("quiz", FOUR, FOUR, "t")]


def _score(prose: float, math_: float, quiz: float = 0.75, n: int = 400) -> Score:
    """Perplexities of two text tasks and an accuracy (as NLL = log ppl)."""
    return Score("heldout", None, {
        "prose": TaskScore("prose", {"nll": math.log(prose), "ppl": prose, "n": 1}),
        "math": TaskScore("math", {"nll": math.log(math_), "ppl": math_, "n": 1}),
        "quiz": TaskScore("quiz", {"acc": quiz, "acc_norm": quiz, "n": n}),
    })


def test_a_specialist_that_wins_one_task_and_loses_more_on_another_scores_below_one():
    base = _score(prose=10.0, math_=10.0)
    specialist = _score(prose=30.0, math_=5.0)  # 3x worse on prose, 2x better on math
    ret = symmetric_retention(specialist, base, _tasks()[:2])
    assert ret.retention_sym == pytest.approx(math.sqrt(2.0 / 3.0))  # exp((log(1/3) + log 2) / 2)
    assert ret.retention_sym < 1.0
    assert ret.worst_task == ("prose", pytest.approx(1 / 3))
    # the old mean of ratios would call it better than the base: (1/3 + 2) / 2 = 1.17


def test_on_perplexity_tasks_a_vs_b_is_one_over_b_vs_a():
    a, b = _score(prose=12.0, math_=4.0), _score(prose=9.0, math_=7.0)
    tasks = _tasks()[:2]
    ab = symmetric_retention(a, b, tasks).retention_sym
    ba = symmetric_retention(b, a, tasks).retention_sym
    assert ab * ba == pytest.approx(1.0)
    assert ab == pytest.approx(math.sqrt((9 / 12) * (7 / 4)))


def test_multiple_choice_ratio_is_above_chance_and_floored_at_collapse():
    base = _score(10.0, 10.0, quiz=0.75)
    ret = symmetric_retention(_score(10.0, 10.0, quiz=0.5), base, _tasks())
    assert ret.log_ratios["quiz"] == pytest.approx(math.log((0.5 - 0.25) / (0.75 - 0.25)))
    collapsed = symmetric_retention(_score(10.0, 10.0, quiz=0.1), base, _tasks())
    assert collapsed.log_ratios["quiz"] == pytest.approx(math.log(ABOVE_CHANCE_FLOOR / 0.5))
    assert math.isfinite(collapsed.retention_sym) and collapsed.worst_task[0] == "quiz"


def test_the_likelihood_form_compares_the_gold_choices_cross_entropy_in_nats():
    base, pruned = _score(10.0, 10.0, quiz=0.75), _score(20.0, 10.0, quiz=0.5)
    base.tasks["quiz"].metrics["choice_nll"] = 0.7
    pruned.tasks["quiz"].metrics["choice_nll"] = 0.9
    ret = symmetric_retention(pruned, base, _tasks(), mc="likelihood")
    assert ret.log_ratios == pytest.approx({"prose": math.log(0.5), "math": 0.0, "quiz": -0.2})
    assert ret.retention_sym == pytest.approx(math.exp((math.log(0.5) - 0.2) / 3))
    # the default (reported) form is still the accuracy ratio
    acc = symmetric_retention(pruned, base, _tasks())
    assert acc.log_ratios["quiz"] == pytest.approx(math.log(0.25 / 0.5))


def test_a_task_where_the_base_is_at_chance_is_reported_but_not_counted():
    # 0.27 on 400 examples is within 2 standard errors (2 * 0.0217) of chance 0.25
    base = _score(10.0, 10.0, quiz=0.27)
    assert counted_tasks(base, _tasks()) == ["prose", "math"]
    ret = symmetric_retention(_score(20.0, 10.0, quiz=0.9), base, _tasks())
    assert ret.counted == ("prose", "math")
    assert "quiz" in ret.log_ratios  # reported
    assert ret.retention_sym == pytest.approx(math.exp(math.log(0.5) / 2))
    assert ret.retention_sym_text == pytest.approx(ret.retention_sym)


def _per_example(score: Score, values: dict[str, list[float]]) -> Score:
    tasks = {}
    for name, ts in score.tasks.items():
        if name not in values:
            continue
        if "acc" in ts.metrics:
            tasks[name] = TaskScore(name, ts.metrics, {"acc": tuple(values[name])})
        else:
            tasks[name] = TaskScore(name, ts.metrics, {"nll_sum": tuple(values[name]),
                                                        "tokens": (10.0,) * len(values[name])})
    return Score(score.split, score.n_examples, tasks)


def test_paired_bootstrap_is_centred_on_the_difference_and_excludes_zero_for_a_clear_win():
    tasks = [make_task("prose", TEXT, TEXT, "t")]
    n = 50
    base = _per_example(_score(1, 1), {"prose": [20.0] * n})
    better = _per_example(_score(1, 1), {"prose": [10.0 + (i % 5) for i in range(n)]})
    worse = _per_example(_score(1, 1), {"prose": [15.0 + (i % 7) for i in range(n)]})
    result = paired_bootstrap(better, worse, base, tasks, ["prose"], n_boot=500, seed=1)
    # per-token NLL: better 1.2, worse 1.8 (means of (10 + i % 5) / 10 and (15 + i % 7) / 10)
    mean_better = sum(10.0 + (i % 5) for i in range(n)) / (10 * n)
    mean_worse = sum(15.0 + (i % 7) for i in range(n)) / (10 * n)
    assert result["diff"] == pytest.approx(mean_worse - mean_better)
    lo, hi = result["ci95"]
    assert 0 < lo < result["diff"] < hi
    same = paired_bootstrap(better, better, base, tasks, ["prose"], n_boot=200)
    assert same["diff"] == 0 and same["ci95"] == [0, 0]


def test_paired_bootstrap_needs_per_example_values():
    from gptailor_merge.core.errors import TaskError

    tasks = [make_task("prose", TEXT, TEXT, "t")]
    with pytest.raises(TaskError, match="per-example"):
        paired_bootstrap(_score(1, 1), _score(1, 1), _score(1, 1), tasks, ["prose"])
