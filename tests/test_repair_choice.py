"""The repair is chosen on validation: a contender keeps its repair only where the repaired model
beats its own unrepaired one with a paired interval above zero, and the pick is made between the
kept forms (synthetic scores with known per-example values)."""

from __future__ import annotations

import numpy as np
import pytest

from gptailor_merge.core.genome import Genome
from gptailor_merge.scoring.evaluate import Score, TaskScore
from gptailor_merge.scoring.intervals import SKILL_Z
from gptailor_merge.scoring.task import Task
from gptailor_merge.search.journal import RungResult, Trial
from gptailor_merge.search.selection import repair_decision, select_on_validation

N = 64
RNG = np.random.default_rng(5)
TOKENS = RNG.integers(10, 30, N).astype(float)
DIFFICULTY = RNG.normal(3.0, 0.5, N) * TOKENS
TASK = Task("t", "perplexity", (), (), 0.0)


def _score(per_token_loss: float, noise: float = 1.0, seed: int = 0) -> Score:
    nll = DIFFICULTY + per_token_loss * TOKENS + np.random.default_rng(seed).normal(0, noise, N)
    ts = TaskScore("t", {"nll": float(nll.sum() / TOKENS.sum()), "ppl": 1.0, "n": N},
                   {"nll_sum": tuple(nll), "tokens": tuple(TOKENS)})
    return Score("validation", None, {"t": ts})


REFERENCE = _score(0.0, noise=0.0)


@pytest.mark.parametrize("repaired_loss, kept", [(0.5, False), (0.301, False), (0.1, True)])
def test_a_repair_is_kept_only_where_it_beats_the_unrepaired_model_on_validation(repaired_loss, kept):
    unrepaired, repaired = _score(0.3, seed=1), _score(repaired_loss, seed=2)
    keep, record = repair_decision(repaired, unrepaired, REFERENCE, [TASK], ["t"], "acc", {"fit_seconds": 1.0})
    assert keep is kept and record["kept"] is kept and record["fit_seconds"] == 1.0
    assert (record["repaired_vs_unrepaired"]["ci95"][0] > 0) is kept
    assert ("keeping the repaired model" in record["message"]) is kept


class _Evaluator:
    """Validation scores by genome id; the base (no removal) is the reference."""

    metric, chance_z, mc_objective, tasks = "acc", 2.0, "likelihood", [TASK]

    def __init__(self, losses: dict[str, float]):
        self.losses = losses
        self.stitcher = type("S", (), {"family": type("F", (), {"n_layers": 6, "n_candidates": 1})()})()

    def reference(self, split, n):
        return REFERENCE

    def objective_tasks(self):
        return [TASK]

    def score(self, genome, split, n):
        assert split == "validation"
        return _score(self.losses[genome.genome_id], seed=len(genome.kept))


def _trial(index: int, genome: Genome) -> Trial:
    rung = RungResult(90, {"t": {"loss": 0.1}}, {"t": 0.1}, 0.9, 0.0)
    return Trial(index=index, genome=genome.to_dict(), genome_id=genome.genome_id, rungs=(rung,), loss=0.1,
                 seconds=0.0)


def test_the_pick_is_between_kept_forms_and_a_harmful_repair_is_dropped():
    finalist = Genome.base_only(6, 1, [1, 2])
    seed = Genome.base_only(6, 1, [4, 5])
    ev = _Evaluator({finalist.genome_id: 0.30, seed.genome_id: 0.25})
    # the repair helps the finalist a lot and hurts the seed: the finalist's repaired form wins
    repaired = {finalist.genome_id: 0.05, seed.genome_id: 0.6}
    calls = []

    def repair(genome, n):
        calls.append(genome.genome_id)
        return _score(repaired[genome.genome_id], seed=10 + len(genome.kept)), {"fit_seconds": 0.0}

    chosen = select_on_validation(ev, [_trial(1, finalist)], 90, {"greedy_ppl": [4, 5]}, repair=repair)
    by_name = {c.name: c for c in chosen.contenders}
    assert sorted(calls) == sorted([finalist.genome_id, seed.genome_id])  # each genome repaired once
    assert by_name["trial 1"].repaired and not by_name["greedy_ppl"].repaired
    assert by_name["greedy_ppl"].repair["kept"] is False
    assert chosen.source == "search" and chosen.winner.repaired
    assert "trial 1+repair" in chosen.message
    # without the repair the seed is the better model and is returned
    plain = select_on_validation(ev, [_trial(1, finalist)], 90, {"greedy_ppl": [4, 5]})
    assert plain.source == "seed" and not plain.winner.repaired


class _CountingEvaluator(_Evaluator):
    def __init__(self, losses: dict[str, float], fail: bool = False):
        super().__init__(losses)
        self.calls, self.fail = [], fail

    def reference(self, split, n):
        self.calls.append("reference")
        assert not self.fail, "a resumed pick scored the reference again"
        return REFERENCE

    def score(self, genome, split, n):
        self.calls.append(genome.genome_id)
        assert not self.fail, "a resumed pick scored a contender again"
        return super().score(genome, split, n)


def test_validation_scores_kept_in_the_run_folder_give_a_resumed_pick_without_scoring_again(tmp_path):
    from gptailor_merge.search.score_cache import ScoreCache

    finalist, seed = Genome.base_only(6, 1, [1, 2]), Genome.base_only(6, 1, [4, 5])
    losses = {finalist.genome_id: 0.30, seed.genome_id: 0.25}
    path = tmp_path / "validation_scores.jsonl"
    first_ev = _CountingEvaluator(losses)
    first = select_on_validation(first_ev, [_trial(1, finalist)], 90, {"greedy_ppl": [4, 5]},
                                 cache=ScoreCache(path))
    assert sorted(first_ev.calls) == sorted(["reference", finalist.genome_id, seed.genome_id])
    assert len(path.read_text().splitlines()) == 3
    again = select_on_validation(_CountingEvaluator(losses, fail=True), [_trial(1, finalist)], 90,
                                 {"greedy_ppl": [4, 5]}, cache=ScoreCache(path))
    assert again.to_dict() == first.to_dict()
    for a, b in zip(first.contenders, again.contenders, strict=True):
        assert a.score == b.score and all(a.score.tasks[k].per_example == b.score.tasks[k].per_example
                                          for k in a.score.tasks)


class _TaggedRepair:
    """A repair scorer with settings (`cache_tag`): counts its fits."""

    def __init__(self, losses: dict[str, float], tag: str):
        self.losses, self.cache_tag, self.calls = losses, tag, []

    def __call__(self, genome, n):
        self.calls.append(genome.genome_id)
        return _score(self.losses[genome.genome_id], seed=10 + len(genome.kept)), {"fit_seconds": 1.5, "maps": 1}


def test_repaired_validation_scores_are_kept_too_so_a_resumed_pick_fits_no_repair_again(tmp_path):
    from gptailor_merge.search.score_cache import ScoreCache

    finalist, seed = Genome.base_only(6, 1, [1, 2]), Genome.base_only(6, 1, [4, 5])
    losses = {finalist.genome_id: 0.30, seed.genome_id: 0.25}
    repaired = {finalist.genome_id: 0.05, seed.genome_id: 0.6}
    path = tmp_path / "validation_scores.jsonl"
    pick = lambda ev, repair: select_on_validation(ev, [_trial(1, finalist)], 90, {"greedy_ppl": [4, 5]},  # noqa: E731
                                                   repair=repair, cache=ScoreCache(path))
    first_repair = _TaggedRepair(repaired, "settings-a")
    first = pick(_CountingEvaluator(losses), first_repair)
    assert sorted(first_repair.calls) == sorted([finalist.genome_id, seed.genome_id])
    assert len(path.read_text().splitlines()) == 5  # reference, two unrepaired, two repaired
    resumed_repair = _TaggedRepair(repaired, "settings-a")
    again = pick(_CountingEvaluator(losses, fail=True), resumed_repair)
    assert resumed_repair.calls == [] and again.to_dict() == first.to_dict()
    assert again.winner.repaired and again.winner.repair["fit_seconds"] == 1.5
    other = _TaggedRepair(repaired, "settings-b")  # other repair settings: fitted again, never read back
    pick(_CountingEvaluator(losses, fail=True), other)
    assert sorted(other.calls) == sorted([finalist.genome_id, seed.genome_id])


def test_a_torn_last_score_line_is_skipped_and_cut_before_the_next_write(tmp_path):
    from gptailor_merge.search.score_cache import ScoreCache

    path = tmp_path / "validation_scores.jsonl"
    cache = ScoreCache(path)
    cache.get("a/validation/all", lambda: _score(0.1))
    with path.open("ab") as handle:
        handle.write(b'{"key": "b/validation/all", "score": {"spl')  # the kill cut this write short
    resumed = ScoreCache(path)
    assert list(resumed.scores) == ["a/validation/all"]
    resumed.get("c/validation/all", lambda: _score(0.2))
    assert list(ScoreCache(path).scores) == ["a/validation/all", "c/validation/all"]
    path.write_text('{"key": "x"}\n{"key": "c/validation/all", "score": {}}\n')
    with pytest.raises(ValueError, match="line 1 is not a score record.*delete the file"):
        ScoreCache(path)


def test_a_repair_that_costs_a_searched_skill_is_not_kept_and_the_message_names_it():
    """A text gain large enough to beat the unrepaired model overall, with a multiple-choice task
    that falls by more than its paired standard error: the record lists every task's change, the
    message names the loss, and the unrepaired model is kept; without the loss the repair is kept."""
    mc = Task("mc", "multiple_choice", (), (), 0.25)
    rng = np.random.default_rng(3)
    gold = rng.random(N) < 0.7
    lost = gold & (rng.random(N) < 0.15)  # the repair forgets ~15% of what the model knew

    def scored(ppl: Score, correct: np.ndarray) -> Score:
        acc = TaskScore("mc", {"acc": float(correct.mean()), "n": N}, {"acc": tuple(correct.astype(float))})
        return Score("validation", None, {**ppl.tasks, "mc": acc})

    reference = scored(REFERENCE, gold)
    unrepaired, repaired = scored(_score(0.9, seed=1), gold), scored(_score(0.05, seed=2), gold & ~lost)
    keep, record = repair_decision(repaired, unrepaired, reference, [TASK, mc], ["t", "mc"], "acc", {})
    (change,) = record["skills"]
    assert change["task"] == "mc" and change["n"] == N and change["fell"] is True
    assert change["diff"] == pytest.approx(-lost.mean()) and 0 < change["se"] < lost.mean()
    assert record["repaired_vs_unrepaired"]["ci95"][0] > 0  # better overall ...
    assert keep is False and record["kept"] is False  # ... but a skill is lost
    assert f"but it lowers mc by {lost.mean():.3f}" in record["message"]
    assert record["message"].endswith("keeping the unrepaired model")
    # the same repair without the loss: nothing named, kept
    keep, clean = repair_decision(scored(_score(0.05, seed=2), gold), unrepaired, reference, [TASK, mc],
                                  ["t", "mc"], "acc", {})
    assert clean["skills"][0]["fell"] is False and "lowers" not in clean["message"]
    assert keep is True and clean["message"].endswith("keeping the repaired model")
    assert change["lost"] is True and "lost)" in record["message"]
    # three examples forgotten: more than one paired SE, under SKILL_Z of them; named, not decisive
    few = gold & (np.cumsum(gold) <= 3)
    keep, small = repair_decision(scored(_score(0.05, seed=2), gold & ~few), unrepaired, reference, [TASK, mc],
                                  ["t", "mc"], "acc", {})
    (change,) = small["skills"]
    assert change["fell"] is True and change["lost"] is False and -change["diff"] < SKILL_Z * change["se"]
    assert keep is True and "lowers mc by 0.047" in small["message"]
    assert small["message"].endswith("keeping the repaired model")


def test_a_repair_the_yardstick_cannot_resolve_is_kept_on_the_likelihood_objective_as_the_pick_does():
    mc = Task("mc", "multiple_choice", (), (), 0.25)
    rng = np.random.default_rng(0)
    n = 128

    def scored(acc, nll) -> Score:
        ts = TaskScore("mc", {"acc": float(np.mean(acc)), "choice_nll": float(np.mean(nll)), "n": n},
                       {"acc": tuple(acc), "choice_nll": tuple(nll)})
        return Score("validation", None, {"mc": ts})

    ref_acc = (rng.random(n) < 0.6).astype(float)
    ref_nll = rng.normal(1.0, 0.3, n)
    un_acc, un_nll = ref_acc.copy(), ref_nll + 0.2 + rng.normal(0, 0.02, n)
    un_acc[np.flatnonzero(ref_acc)[:10]] = 0.0
    re_acc, re_nll = un_acc.copy(), un_nll - 0.08 + rng.normal(0, 0.02, n)
    re_acc[np.flatnonzero(un_acc == 0)[:2]] = 1.0  # two flips: no resolution on accuracy
    reference, unrepaired, repaired = scored(ref_acc, ref_nll), scored(un_acc, un_nll), scored(re_acc, re_nll)
    keep_acc, on_acc = repair_decision(repaired, unrepaired, reference, [mc], ["mc"], "acc", {})
    assert keep_acc is False and on_acc["repaired_vs_unrepaired"]["ci95"][0] <= 0
    keep, record = repair_decision(repaired, unrepaired, reference, [mc], ["mc"], "acc", {},
                                   objective_counted=["mc"], mc="likelihood")
    assert keep is True and record["repaired_vs_unrepaired_objective"]["ci95"][0] > 0
    assert "on the likelihood objective" in record["message"] and record["message"].endswith("repaired model")
