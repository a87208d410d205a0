"""Callbacks that show and measure a diffusion model as a multi-task learner."""

from dtr_lab.callbacks.routing_maps import RoutingMaps
from dtr_lab.callbacks.sample_grid import SampleGrid

__all__ = ["RoutingMaps", "SampleGrid"]
