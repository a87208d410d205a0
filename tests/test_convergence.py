"""Curve summaries: steps to a target FID and the plateau, worked by hand, paired and censored."""

import math

import pytest

from dtr_lab.errors import DTRLabError
from dtr_lab.runs.convergence import TargetSteps, paired_steps, plateau, steps_to_target

STEPS = [200, 400, 600, 800, 1000, 1200]


def test_steps_to_target_interpolates_between_scoring_points():
    fid = [120, 80, 40, 30, 25, 26]
    # 40 at 600 > 35 ≥ 30 at 800: 600 + 200 · (40 − 35) / (40 − 30) = 700
    assert steps_to_target(STEPS, fid, 35).step == pytest.approx(700)
    assert steps_to_target(STEPS, fid, 40).step == 600  # reached exactly at a scoring point
    assert steps_to_target(STEPS, fid, 500).step == 200  # the first point is already below
    # a later rise above the target does not undo the first crossing
    assert steps_to_target(STEPS, [50, 20, 60, 60, 60, 60], 30).step == pytest.approx(200 + 200 * 20 / 30)


def test_a_target_never_reached_says_so_with_the_last_step():
    r = steps_to_target(STEPS, [120, 80, 40, 30, 25, 26], 20)
    assert not r.reached and r.step is None and r.last_step == 1200
    assert r.censored_step == 1200 and r.entry() == "not reached by step 1200"
    # NaN points are skipped, not compared; the order of the points does not matter
    r = steps_to_target([400, 200, 600], [float("nan"), 50, 10], 30)
    assert r.step == pytest.approx(200 + 400 * 20 / 40)


def test_plateau_is_the_mean_of_the_last_points():
    assert plateau(STEPS, [120, 80, 40, 30, 25, 26]) == pytest.approx((30 + 25 + 26) / 3)
    assert plateau(STEPS, [120, 80, 40, 30, 25, 26], last=2) == pytest.approx(25.5)
    with pytest.raises(DTRLabError, match="needs at least 3, the curve has 2"):
        plateau([100, 200], [5, 4])
    with pytest.raises(DTRLabError, match="no scored point"):
        plateau([100], [float("nan")])


def test_paired_steps_by_hand():
    # a reaches at 600, 700, 800; b at 400, 600, 500: differences −200, −100, −300 -> mean −200, sd 100,
    # half-width t_{0.975, 2} · 100/√3 = 4.303 · 57.74 = 248.4
    a = [TargetSteps(s, 1200) for s in (600, 700, 800)]
    b = [TargetSteps(s, 1200) for s in (400, 600, 500)]
    p = paired_steps(a, b)
    assert (p.both, p.censored, p.neither) == (3, 0, 0)
    assert p.difference.mean == pytest.approx(-200)
    assert p.difference.half_width == pytest.approx(4.3027 * 100 / math.sqrt(3), abs=0.1)
    assert p.entry() == "-200 [-448, +48]"


def test_a_pair_where_only_one_arm_reaches_is_censored_at_the_last_step():
    # pair 3: b reaches at 900, a never by 1200 -> a counted at 1200, difference −300 (an upper bound);
    # pair 4: neither reaches -> left out and counted
    a = [TargetSteps(600, 1200), TargetSteps(700, 1200), TargetSteps(None, 1200), TargetSteps(None, 1200)]
    b = [TargetSteps(400, 1200), TargetSteps(600, 1200), TargetSteps(900, 1200), TargetSteps(None, 1200)]
    p = paired_steps(a, b)
    assert (p.both, p.b_only, p.a_only, p.neither) == (2, 1, 0, 1)
    assert p.difference.n == 3 and p.difference.mean == pytest.approx((-200 - 100 - 300) / 3)
    assert p.entry().endswith("(1 of 3 censored at step 1200; 1 not reached by step 1200)")


def test_a_target_no_arm_reaches_gives_an_entry_not_a_nan():
    a = [TargetSteps(None, 1200)] * 3
    p = paired_steps(a, a)
    assert p.difference.n == 0 and p.entry() == "not reached by step 1200"
    one = paired_steps([TargetSteps(None, 1200)], [TargetSteps(1000, 1200)])
    assert one.entry() == "-200 (1 of 1 censored at step 1200)"  # one pair: no interval
