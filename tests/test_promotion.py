"""Successive halving, unit by unit: who is promoted, and what nevergrad is told for a stopped trial."""

import math

import pytest

from gptailor_merge.search.halving import promoted, told_loss


def test_the_first_trial_of_a_rung_is_always_promoted():
    assert promoted([], 0.9, eta=3)


def test_a_trial_is_promoted_while_in_the_top_third_of_its_rung():
    previous = [0.10, 0.20, 0.30, 0.40, 0.50]
    # with the new loss the six losses' 1/3 quantile (numpy linear) is the cut-off
    assert promoted(previous, 0.15, eta=3)  # second best of six
    assert promoted(previous, 0.10, eta=3)  # tied with the best
    assert not promoted(previous, 0.35, eta=3)  # fourth of six
    assert not promoted(previous, 0.60, eta=3)  # worst
    # eta = 2: the top half
    assert promoted(previous, 0.25, eta=2) and not promoted(previous, 0.45, eta=2)


def test_promotion_depends_only_on_the_losses_so_far_not_their_order():
    losses = [0.3, 0.1, 0.5, 0.2]
    assert promoted(losses, 0.18, eta=3) == promoted(sorted(losses), 0.18, eta=3)


def test_a_full_fidelity_loss_is_told_as_it_is():
    rungs = {10: [0.5, 0.4], 30: [0.3], 90: [0.2, 0.25]}
    assert told_loss(0.22, 90, rungs, top=90) == 0.22


def test_a_stopped_trial_is_told_the_top_rungs_loss_at_its_own_quantile():
    rungs = {10: [0.1, 0.2, 0.3, 0.4, 0.5], 90: [0.05, 0.15, 0.25, 0.35]}
    # 0.4 is the 4th of 5 at rung 10 (quantile 0.8): the top rung's 0.8 quantile, not its raw 0.4
    assert told_loss(0.4, 10, rungs, top=90) == pytest.approx(0.29)
    # a lucky few-example loss better than every full one is still told a full-fidelity number
    assert told_loss(0.01, 10, {10: [0.01, 0.3], 90: [0.2, 0.4]}, top=90) == pytest.approx(0.3)
    # the worst of its rung is told the worst full-fidelity loss
    assert told_loss(0.5, 10, rungs, top=90) == pytest.approx(0.35)


def test_with_no_full_fidelity_loss_yet_a_stopped_trial_is_told_its_own():
    assert told_loss(0.4, 10, {10: [0.4], 90: []}, top=90) == 0.4
    assert math.isfinite(told_loss(0.4, 10, {10: [0.4]}, top=90))
