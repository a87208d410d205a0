"""Loss weights against hand-worked values at a few SNRs."""

import pytest
import torch

from dtr_lab.diffusion.weighting import P2, MinSNR, Uniform
from dtr_lab.errors import DTRLabError


def test_uniform_is_one_with_the_shape_of_snr():
    snr = torch.tensor([[0.01, 1.0], [10.0, 1e4]])
    assert torch.equal(Uniform()(snr), torch.ones(2, 2))


def test_min_snr_clips_high_snr_and_keeps_low_snr():
    snr = torch.tensor([0.5, 5.0, 20.0, 100.0])
    # min(SNR, 5) / SNR: 0.5/0.5, 5/5, 5/20, 5/100
    assert torch.allclose(MinSNR(gamma=5.0)(snr), torch.tensor([1.0, 1.0, 0.25, 0.05]))
    assert torch.allclose(MinSNR(gamma=1.0)(torch.tensor([4.0])), torch.tensor([0.25]))


def test_p2_at_hand_worked_snrs():
    snr = torch.tensor([0.0, 1.0, 3.0])
    assert torch.allclose(P2(k=1.0, gamma=1.0)(snr), torch.tensor([1.0, 0.5, 0.25]))
    # 1 / sqrt(1 + SNR): 1/2 at SNR 3, 1/3 at SNR 8
    assert torch.allclose(P2(k=1.0, gamma=0.5)(torch.tensor([3.0, 8.0])), torch.tensor([0.5, 1 / 3]))
    assert torch.allclose(P2(k=0.0, gamma=1.0)(torch.tensor([4.0])), torch.tensor([0.25]))


def test_weights_keep_the_shape():
    snr = torch.rand(3, 4) + 0.1
    for weighting in (Uniform(), MinSNR(), P2()):
        assert weighting(snr).shape == snr.shape


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: MinSNR(gamma=0.0), "weighting.gamma"),
        (lambda: MinSNR(gamma=-5.0), "weighting.gamma"),
        (lambda: P2(gamma=0.0), "weighting.gamma"),
        (lambda: P2(k=-1.0), "weighting.k"),
    ],
)
def test_bad_parameters_name_the_option(make, option):
    with pytest.raises(DTRLabError, match=option):
        make()
