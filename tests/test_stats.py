"""Paired differences: the t interval worked by hand."""

import math

import pytest

from dtr_lab.stats import paired_difference


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
