"""Denoising networks: plain nn.Modules whose blocks are routed by a RoutingStrategy."""

from dtr_lab.models.dit import DiT

__all__ = ["DiT"]
