"""Denoising networks: plain nn.Modules whose blocks are routed by a Routing."""

from dtr_lab.models.denoiser import Denoiser
from dtr_lab.models.dit import DiT
from dtr_lab.models.experts import IntervalExperts
from dtr_lab.models.unet import UNet

__all__ = ["Denoiser", "DiT", "IntervalExperts", "UNet"]
