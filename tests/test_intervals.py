"""Task intervals: edges, index, stratified sampling, log-SNR spacing and bad input."""

import pytest
import torch

from dtr_lab.diffusion import GaussianDiffusion
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals, TaskIntervals


def linear_snr(num_timesteps: int = 1000) -> torch.Tensor:
    return GaussianDiffusion(num_timesteps, "linear").snr(torch.arange(num_timesteps))


def test_uniform_edges():
    assert Intervals(num_intervals=5).build(linear_snr()).edges.tolist() == [0, 200, 400, 600, 800, 1000]
    # T = 10 does not split evenly: floor(10·k/3)
    assert Intervals(num_intervals=3).build(torch.ones(10)).edges.tolist() == [0, 3, 6, 10]


def test_boundaries_override_the_count():
    config = Intervals(num_intervals=7, boundaries=[0, 10, 50, 100])
    assert config.k == 3
    intervals = config.build(torch.ones(100))
    assert intervals.num_intervals == 3 and intervals.num_timesteps == 100


def test_index_matches_hand_values_and_brute_force():
    intervals = TaskIntervals([0, 10, 50, 100], 100)
    assert intervals.index(torch.tensor([0, 9, 10, 49, 50, 99])).tolist() == [0, 0, 1, 1, 2, 2]
    t = torch.arange(100)
    brute = torch.tensor([sum(int(e <= s) for e in (10, 50)) for s in range(100)])
    assert torch.equal(intervals.index(t), brute)


def test_midpoints_and_labels():
    intervals = TaskIntervals([0, 200, 400, 1000], 1000)
    assert intervals.midpoints().tolist() == [100, 300, 700]
    assert intervals.labels() == ["0–199", "200–399", "400–999"]


def test_stratified_timesteps_draw_each_interval_in_order():
    intervals = TaskIntervals([0, 1, 3, 6, 100], 100)
    t = intervals.stratified_timesteps(300, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.shape == (4 * 300,) and t.dtype == torch.long
    assert torch.equal(intervals.index(t).view(4, 300), torch.arange(4)[:, None].expand(4, 300))
    groups = t.view(4, 300)
    # every timestep of a small interval is drawn, none outside it
    assert set(groups[0].tolist()) == {0}
    assert set(groups[1].tolist()) == {1, 2}
    assert set(groups[2].tolist()) == {3, 4, 5}
    assert groups[3].min() >= 6 and groups[3].max() <= 99
    again = intervals.stratified_timesteps(300, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(t, again)


def test_per_interval_divides_the_batch_or_names_the_options():
    intervals = TaskIntervals([0, 250, 500, 750, 1000], 1000)
    assert intervals.per_interval(128) == 32
    with pytest.raises(DTRLabError, match=r"data\.batch_size=130.*intervals\.num_intervals=4"):
        intervals.per_interval(130)


def test_log_snr_edges_on_a_log_linear_snr():
    # log SNR falls linearly from 5 to -5 over 100 steps: level crossings at t = 24.75, 49.5, 74.25
    snr = torch.exp(torch.linspace(5, -5, 100, dtype=torch.float64))
    edges = Intervals(num_intervals=4, spacing="log_snr").build(snr).edges.tolist()
    assert edges == [0, 25, 50, 75, 100]


def test_snr_clustering_spacings_use_the_named_objective():
    snr = linear_snr()
    assert len(snr) == 1000
    # ANT's SNR objective and the log-SNR variance, each solved exactly (see test_clustering.py)
    assert Intervals(4, spacing="ant_snr").build(snr).edges.tolist() == [0, 1, 4, 16, 1000]
    assert Intervals(4, spacing="log_snr_variance").build(snr).edges.tolist() == [0, 150, 486, 770, 1000]
    with pytest.raises(DTRLabError, match="spacing='ant' is unknown; choose one of uniform, log_snr, ant_"):
        Intervals(4, spacing="ant").build(snr)


def test_log_snr_intervals_have_equal_log_snr_ranges():
    snr = linear_snr()
    intervals = Intervals(num_intervals=8, spacing="log_snr").build(snr)
    log_snr = snr.double().log()
    width = (log_snr[0] - log_snr[-1]) / 8
    levels = log_snr[0] - width * torch.arange(9)
    k = intervals.index(torch.arange(1000))
    assert (log_snr <= levels[k] + 1e-9).all() and (log_snr >= levels[k + 1] - 1e-9).all()
    assert intervals.edges.tolist() != Intervals(num_intervals=8).build(snr).edges.tolist()


@pytest.mark.parametrize(
    ("config", "num_timesteps", "match"),
    [
        (Intervals(num_intervals=1), 100, r"intervals\.num_intervals=1"),
        (Intervals(num_intervals=5), 4, r"intervals\.num_intervals=5 is larger"),
        (Intervals(boundaries=[0, 5, 5, 10]), 10, r"intervals\.boundaries.*strictly increasing"),
        (Intervals(boundaries=[0, 7, 5, 10]), 10, r"intervals\.boundaries.*strictly increasing"),
        (Intervals(boundaries=[1, 5, 10]), 10, r"intervals\.boundaries.*start at 0"),
        (Intervals(boundaries=[0, 5, 9]), 10, r"intervals\.boundaries.*end at T=10"),
        (Intervals(boundaries=[0, 5, 12]), 10, r"intervals\.boundaries"),
        (Intervals(boundaries=[0, 10]), 10, r"intervals\.num_intervals=1"),
        (Intervals(spacing="cosine"), 10, r"intervals\.spacing='cosine'"),
    ],
)
def test_bad_intervals_name_the_option(config, num_timesteps, match):
    snr = torch.exp(-torch.arange(num_timesteps, dtype=torch.float64))
    with pytest.raises(DTRLabError, match=match):
        config.build(snr)


def test_log_snr_spacing_rejects_an_empty_interval():
    # a jump in log-SNR from 8 to -10 leaves the middle third of the range without a timestep
    snr = torch.tensor([10.0, 9.0, 8.0, -10.0], dtype=torch.float64).exp()
    with pytest.raises(DTRLabError, match=r"intervals\.num_intervals=3.*empty"):
        Intervals(num_intervals=3, spacing="log_snr").build(snr)


def test_log_snr_spacing_needs_a_decreasing_snr():
    with pytest.raises(DTRLabError, match="log_snr"):
        Intervals(num_intervals=2, spacing="log_snr").build(torch.ones(10))
