"""Denoising networks: plain nn.Modules whose blocks are routed by a Routing."""

from dtr_lab.models.dit import DiT
from dtr_lab.models.experts import IntervalExperts
from dtr_lab.models.unet import UNet

__all__ = ["DiT", "IntervalExperts", "UNet"]
