"""Paired differences: the t interval worked by hand."""

import math

import pytest

from dtr_lab.runs.stats import paired_difference


def test_three_pairs_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.303 -> 2 ± 4.303/√3 = 2 ± 2.484
    d = paired_difference([1.0, 2.0, 3.0])
    assert d.n == 3 and d.mean == pytest.approx(2.0)
    assert d.half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert not d.excludes_zero()  # 2 − 2.484 < 0


def test_five_pairs_exclude_zero_and_nan_is_dropped():
    # 1, 1, 2, 2, 3 and a missing seed: mean 1.8, sd √0.7, t_{0.975, 4} = 2.776 -> 1.8 ± 1.039
    d = paired_difference([1, 1, 2, 2, 3, float("nan")])
    assert d.n == 5 and d.mean == pytest.approx(1.8)
    assert d.half_width == pytest.approx(2.7764 * math.sqrt(0.7) / math.sqrt(5), abs=1e-3)
    assert d.excludes_zero() and d.low == pytest.approx(1.8 - d.half_width)


def test_one_pair_has_no_interval():
    d = paired_difference([4.0])
    assert d.mean == 4.0 and math.isnan(d.half_width) and not d.excludes_zero()
    assert paired_difference([]).n == 0


# --- precision fixed before a study: pairs needed, detectable effect, the verdict rule ---


def test_pairs_needed_and_half_width_by_hand():
    from dtr_lab.runs.stats import expected_half_width, pairs_needed

    # t(0.975, 23) = 2.0687, t(0.975, 22) = 2.0739: at sd 3.3, 24 pairs give 1.3935, 23 give 1.4270
    assert expected_half_width(3.3, 24) == pytest.approx(2.0687 * 3.3 / 24**0.5, rel=1e-4)
    assert pairs_needed(3.3, 1.41) == 24
    assert pairs_needed(3.3, 1.43) == 23
    assert pairs_needed(1.0, 100.0) == 2  # the fewest pairs an interval has


def test_detectable_effect_by_hand():
    from dtr_lab.runs.stats import detectable_effect

    # (t(0.975, 23) + t(0.80, 23)) · sd/√n = (2.0687 + 0.8575) · 3.3 / √24
    assert detectable_effect(3.3, 24) == pytest.approx((2.0687 + 0.8575) * 3.3 / 24**0.5, rel=1e-3)
    assert detectable_effect(3.3, 32) < detectable_effect(3.3, 24)


def test_sd_of_recovers_the_sd_behind_an_interval():
    from dtr_lab.runs.stats import paired_difference, sd_of

    d = [1.0, 3.0, 2.0, 6.0]  # sd with n − 1: √(14/3)
    assert sd_of(paired_difference(d)) == pytest.approx((14 / 3) ** 0.5)


@pytest.mark.parametrize(
    "mean, half_width, expected",
    [
        (-3.0, 2.0, "better"),  # [-5, -1]: lower FID
        (3.0, 2.0, "worse"),
        (1.0, 8.0, "no difference beyond ±10 %"),  # [-7, 9] inside ±10
        (0.0, 10.0, "no difference beyond ±10 %"),  # the margin's edge is inside
        (4.0, 7.0, "undecided at this precision"),  # [-3, 11]: crosses 0 and +10
        (0.0, 12.0, "undecided at this precision"),
    ],
)
def test_verdict_rule(mean, half_width, expected):
    from dtr_lab.runs.stats import PairedDifference, verdict

    assert verdict(PairedDifference(mean, half_width, 20), 10.0, " %") == expected


def test_verdict_of_one_pair_and_of_a_higher_is_better_score():
    from dtr_lab.runs.stats import PairedDifference, verdict

    assert verdict(PairedDifference(-3.0, float("nan"), 1), 10.0) == "undecided at this precision"
    assert verdict(PairedDifference(-3.0, 2.0, 20), 10.0, lower_is_better=False) == "worse"
