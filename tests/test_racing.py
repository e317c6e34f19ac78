"""Paired racing and the validation pick: a lucky first rung does not decide, and the returned
winner is never worse than the best baseline seed on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptailor_merge.core.config import SearchConfig
from gptailor_merge.core.genome import Genome
from gptailor_merge.scoring.evaluate import Score, TaskScore
from gptailor_merge.scoring.task import Task
from gptailor_merge.search.journal import RungResult
from gptailor_merge.search.loop import run_search
from gptailor_merge.search.racing import keeps_racing, paired_difference
from gptailor_merge.search.selection import Contender, decide
from gptailor_merge.search.space import SearchSpace

TOP, FIRST = 90, 30


def _paired(losses, weights=None) -> dict:
    losses = [float(v) for v in losses]
    return {"t": {"loss": losses, "weight": [1.0] * len(losses) if weights is None else list(weights)}}


def test_paired_difference_is_the_objective_difference_with_a_paired_standard_error():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.0, 50)  # shared by both: pairing cancels it
    inc, ch = difficulty + 0.30 + rng.normal(0, 0.05, 50), difficulty + 0.20 + rng.normal(0, 0.05, 50)
    tokens = rng.integers(5, 20, 50).astype(float)
    got = paired_difference(_paired(ch * tokens, tokens), _paired(inc * tokens, tokens))
    assert got.diff == pytest.approx(float(np.sum((inc - ch) * tokens) / tokens.sum()))
    unpaired_se = math.sqrt(np.var(inc) / 50 + np.var(ch) / 50)
    assert got.se < unpaired_se / 5  # the shared difficulty is gone from the noise
    assert got.lower(1.96) > 0  # a clear win of 0.1 nats
    same = paired_difference(_paired(inc), _paired(inc))
    assert same.diff == 0.0 and same.se == 0.0
    # the challenger's examples are a prefix of the incumbent's
    assert paired_difference(_paired(ch[:20]), _paired(inc)).n_examples == 20


def test_a_challenger_races_on_until_it_is_clearly_worse():
    rng = np.random.default_rng(1)
    inc = rng.normal(0.3, 0.3, TOP)
    close = inc[:FIRST] + 0.02 + rng.normal(0, 0.3, FIRST)  # worse by noise: races on
    far = inc[:FIRST] + 0.5 + rng.normal(0, 0.05, FIRST)  # clearly worse: dropped
    assert keeps_racing(_paired(close), _paired(inc), z=1.96)
    assert not keeps_racing(_paired(far), _paired(inc), z=1.96)
    assert keeps_racing(_paired(far), None, z=1.96)  # no incumbent yet: it becomes the first


def test_no_rung_ranks_on_fewer_examples_than_min_rung_examples():
    assert SearchConfig(max_examples=90).rungs() == [30, 90]  # 10 examples: dropped
    assert SearchConfig(max_examples=270).rungs() == [30, 90, 270]
    assert SearchConfig(max_examples=27).rungs() == [27]  # the top rung always stays
    assert SearchConfig(max_examples=90, min_rung_examples=1).rungs() == [10, 30, 90]
    for top in range(1, 400, 7):
        rungs = SearchConfig(max_examples=top).rungs()
        assert rungs[-1] == top and min(rungs) >= min(30, top)


class _SyntheticEvaluator:
    """Per-example losses with known means: loss = difficulty (shared) + mean + noise, and a planted
    offset on the first rung's examples (luck). Retention = exp(-mean loss)."""

    def __init__(self, profiles: dict[str, tuple[float, float]], seed: int = 0):
        rng = np.random.default_rng(seed)
        difficulty = rng.normal(0, 0.5, TOP)
        self.losses = {}
        for i, (gid, (mean, luck)) in enumerate(profiles.items()):
            noise = np.random.default_rng([seed, i]).normal(0, 0.3, TOP)
            noise[:FIRST] -= noise[:FIRST].mean()  # the planted luck is exactly `luck`
            noise[FIRST:] -= noise[FIRST:].mean()
            noise[:FIRST] += luck
            self.losses[gid] = difficulty - difficulty.mean() + mean + noise
        self.calls: list[tuple[str, int]] = []

    def rung_result(self, genome: Genome, split: str, n_examples: int) -> RungResult:
        self.calls.append((genome.genome_id, n_examples))
        losses = self.losses[genome.genome_id][:n_examples]
        mean = float(losses.mean())
        return RungResult(n_examples, {"t": {"loss": mean}}, {"t": mean}, math.exp(-mean), 0.0,
                          _paired(losses))


def _lucky_search(tmp_path, promotion: str):
    space = SearchSpace(6, 1, 4, allow_candidates=False)
    removals = [[4, 5], [3, 5], [2, 5]]
    mediocre, lucky, best = (Genome.base_only(6, 1, r).genome_id for r in removals)
    # true mean losses 0.30 / 0.25 / 0.15; `lucky` reads 0.08 better on the first rung's examples,
    # `best` 0.03 worse: at 30 examples lucky looks best, at 90 it is not
    profiles = {mediocre: (0.30, 0.0), lucky: (0.25, -0.08), best: (0.15, 0.03)}
    evaluator = _SyntheticEvaluator(profiles)
    result = run_search(space, evaluator, tmp_path / promotion, optimizer="RandomSearch", n_trials=3,
                        rungs=[FIRST, TOP], eta=3, promotion=promotion, seed=0,
                        extra_seed_removals=removals, seed_fraction=1.0, progress=False)
    return result, evaluator, (mediocre, lucky, best)


def test_a_first_rung_lucky_draw_fools_asha_but_not_the_race(tmp_path):
    asha, asha_ev, (mediocre, lucky, best) = _lucky_search(tmp_path, "asha")
    assert [t.genome_id for t in asha.trials] == [mediocre, lucky, best]
    assert (best, TOP) not in asha_ev.calls  # the true best is dropped at 30 examples
    assert asha.best.genome_id == lucky
    race, race_ev, _ = _lucky_search(tmp_path, "race")
    assert (best, TOP) in race_ev.calls  # not clearly worse at 30: it races on
    assert race.best.genome_id == best


def _score(nll: np.ndarray, tokens: np.ndarray) -> Score:
    ts = TaskScore("t", {"nll": float(nll.sum() / tokens.sum()), "ppl": 1.0, "n": len(nll)},
                   {"nll_sum": tuple(nll), "tokens": tuple(tokens)})
    return Score("validation", None, {"t": ts})


def _contender(name, kind, nll, tokens, reference) -> Contender:
    score = _score(nll, tokens)
    ret = math.exp(reference.tasks["t"].metrics["nll"] - score.tasks["t"].metrics["nll"])
    return Contender(name, kind, Genome.base_only(6, 1, [len(name) % 6]), None, ret, ret, score)


@pytest.mark.parametrize("gain, source", [(0.2, "search"), (0.002, "seed"), (-0.1, "seed")])
def test_the_returned_winner_is_never_worse_than_the_best_seed_on_validation(gain, source):
    rng = np.random.default_rng(3)
    tokens = rng.integers(10, 30, 64).astype(float)
    difficulty = rng.normal(3.0, 0.5, 64) * tokens
    task = Task("t", "perplexity", (), (), 0.0)
    reference = _score(difficulty, tokens)
    seed_nll = difficulty + 0.3 * tokens + rng.normal(0, 2.0, 64)
    seeds = [_contender("greedy_ppl", "seed", seed_nll, tokens, reference),
             _contender("shortgpt", "seed", difficulty + 0.6 * tokens, tokens, reference)]
    finalist = _contender("trial 7", "finalist", seed_nll - gain * tokens + rng.normal(0, 2.0, 64),
                          tokens, reference)
    finalist = Contender(finalist.name, "finalist", Genome.base_only(6, 1, [0, 1]),
                         type("T", (), {"origin": "local", "index": 7, "retention": 1.0})(),
                         finalist.objective, finalist.retention_sym, finalist.score)
    chosen = decide([finalist, *seeds], reference, [task], ["t"], "acc", None)
    assert chosen.source == source
    assert chosen.best_seed.name == "greedy_ppl"
    assert chosen.winner.retention_sym >= chosen.best_seed.retention_sym
    if source == "seed":
        assert chosen.winner is chosen.best_seed
        assert "no genome beat greedy_ppl's removal on validation" in chosen.message
        assert chosen.message.endswith("returning it")
    else:
        assert chosen.vs_best_seed["ci95"][0] > 0 and "beat greedy_ppl's removal" in chosen.message


def _mc_contender(name, kind, acc, choice_nll, genome, trial=None) -> Contender:
    ts = TaskScore("mc", {"acc": float(np.mean(acc)), "choice_nll": float(np.mean(choice_nll)),
                          "n": len(acc)}, {"acc": tuple(acc), "choice_nll": tuple(choice_nll)})
    return Contender(name, kind, genome, trial, 0.0, 0.0, Score("validation", None, {"mc": ts}))


@pytest.mark.parametrize("acc_gain, source", [(+3, "search"), (-3, "seed")])
def test_a_gain_the_yardstick_cannot_resolve_is_settled_by_the_likelihood_objective(acc_gain, source):
    # 128 four-way examples: a few accuracy flips never clear zero on the yardstick, while the gold
    # choice's cross-entropy, lower on every example, does. It decides only where the finalist is
    # not below the seed on the yardstick itself.
    rng = np.random.default_rng(0)
    n, task = 128, Task("mc", "multiple_choice", (), (), 0.25)
    ref_acc = (rng.random(n) < 0.5).astype(float)
    seed_acc = ref_acc.copy()
    seed_acc[np.flatnonzero(ref_acc)[:8]] = 0.0
    fin_acc = seed_acc.copy()
    flip = np.flatnonzero(seed_acc == 0)[:3] if acc_gain > 0 else np.flatnonzero(seed_acc == 1)[:3]
    fin_acc[flip] = 1.0 if acc_gain > 0 else 0.0
    ref_nll = rng.normal(1.2, 0.3, n)
    seed_nll = ref_nll + 0.10 + rng.normal(0, 0.02, n)
    fin_nll = seed_nll - 0.05 + rng.normal(0, 0.02, n)
    reference = _mc_contender("dense", "seed", ref_acc, ref_nll, Genome.base_only(6, 1)).score
    seed = _mc_contender("greedy_ppl", "seed", seed_acc, seed_nll, Genome.base_only(6, 1, [3]))
    trial = type("T", (), {"origin": "optimizer", "index": 9, "retention": 1.0})()
    fin = _mc_contender("trial 9", "finalist", fin_acc, fin_nll, Genome.base_only(6, 1, [2]), trial)

    only_yardstick = decide([fin, seed], reference, [task], ["mc"], "acc", None)
    assert only_yardstick.source == "seed" and only_yardstick.vs_best_seed["ci95"][0] <= 0
    chosen = decide([fin, seed], reference, [task], ["mc"], "acc", None, objective_counted=["mc"],
                    mc="likelihood")
    assert chosen.vs_best_seed_objective["ci95"][0] > 0  # the likelihood evidence is clear either way
    assert chosen.source == source
    if source == "search":
        assert chosen.winner is fin and "on the likelihood objective" in chosen.message
    else:
        assert chosen.winner is seed and chosen.message.startswith("no genome beat greedy_ppl's removal")
        assert chosen.to_dict()["best_finalist_vs_best_seed_objective"] == chosen.vs_best_seed_objective


def _perplexity_setup(seed: int):
    """(rng, tokens, per-example dense NLL, the task, the dense reference score) of 64 texts."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 30, 64).astype(float)
    difficulty = rng.normal(3.0, 0.5, 64) * tokens
    return rng, tokens, difficulty, Task("t", "perplexity", (), (), 0.0), _score(difficulty, tokens)


def test_a_searched_winner_must_also_beat_the_best_search_seed():
    # the finalist clearly beats both single-model baselines but only ties a merge seed of the
    # search (what a seeds-only run returns): that seed is returned, and the held-out baseline row
    # stays the best single-model baseline
    rng, tokens, difficulty, task, reference = _perplexity_setup(5)
    seeds = [_contender("greedy_ppl", "seed", difficulty + 0.4 * tokens, tokens, reference),
             _contender("shortgpt", "seed", difficulty + 0.6 * tokens, tokens, reference)]
    merge_nll = difficulty + 0.1 * tokens + rng.normal(0, 2.0, 64)
    merge = _contender("seed trial 4", "search seed", merge_nll, tokens, reference)
    merge = Contender(merge.name, "search seed", Genome.base_only(6, 1, [2, 3]), None, merge.objective,
                      merge.retention_sym, merge.score)
    trial = type("T", (), {"origin": "optimizer", "index": 9, "retention": 1.0})()
    fin = _contender("trial 9", "finalist", merge_nll + rng.normal(0, 2.0, 64), tokens, reference)
    fin = Contender(fin.name, "finalist", Genome.base_only(6, 1, [0, 1]), trial, fin.objective,
                    fin.retention_sym, fin.score)
    against_baselines = decide([fin, *seeds], reference, [task], ["t"], "acc", None)
    assert against_baselines.source == "search" and against_baselines.winner is fin
    chosen = decide([fin, merge, *seeds], reference, [task], ["t"], "acc", None)
    assert chosen.source == "seed" and chosen.winner is merge and chosen.best_seed is merge
    assert chosen.best_baseline.name == "greedy_ppl"
    assert chosen.message.startswith("no genome beat seed trial 4 (a search seed) on validation")
    assert chosen.to_dict()["best_baseline"]["name"] == "greedy_ppl"


def test_finalists_are_the_optimizers_proposals_and_search_seeds_the_best_other_seeds():
    from gptailor_merge.search.journal import Trial
    from gptailor_merge.search.selection import finalist_trials

    def trial(index, removed, loss, origin, fidelity=TOP):
        g = Genome.base_only(6, 1, removed)
        rung = RungResult(fidelity, {}, {}, 1 - loss, 0.0)
        return Trial(index=index, genome=g.to_dict(), genome_id=g.genome_id, rungs=(rung,), loss=loss,
                     seconds=0.0, seeded=origin == "seed", extra={"origin": origin})

    trials = [trial(0, [0], 0.05, "seed"), trial(1, [1], 0.10, "seed"), trial(2, [2], 0.20, "seed"),
              trial(3, [3], 0.15, "optimizer"), trial(4, [4], 0.01, "local", fidelity=FIRST),
              trial(5, [5], 0.30, "local")]
    assert [t.index for t in finalist_trials(trials, TOP, 3)] == [3, 5]
    baseline = Genome.base_only(6, 1, [0]).genome_id
    assert [t.index for t in finalist_trials(trials, TOP, 1, seeds=True, exclude=[baseline])] == [1]


def test_a_search_seed_replaces_the_best_baseline_only_on_evidence():
    # a merge seed a hair better than greedy-ppl by its point estimate is not enough: the returned
    # seed stays the single-model baseline, so a seed is never returned on a lucky read
    rng, tokens, difficulty, task, reference = _perplexity_setup(6)
    greedy_nll = difficulty + 0.4 * tokens + rng.normal(0, 2.0, 64)
    base = _contender("greedy_ppl", "seed", greedy_nll, tokens, reference)
    noise = rng.normal(0, 4.0, 64)
    merge = _contender("seed trial 4", "search seed", greedy_nll - 0.01 * tokens + noise - noise.mean(),
                       tokens, reference)
    merge = Contender(merge.name, "search seed", Genome.base_only(6, 1, [2, 3]), None, merge.objective,
                      merge.retention_sym, merge.score)
    assert merge.retention_sym > base.retention_sym  # ahead by its point estimate ...
    chosen = decide([merge, base], reference, [task], ["t"], "acc", None)
    assert chosen.winner is base and chosen.best_seed is base and chosen.source == "seed"  # ... not by evidence
    assert "a search seed" not in chosen.message
