"""Callbacks that show and measure a diffusion model as a multi-task learner."""

from dtr_lab.callbacks.gradient_conflict import GradientConflict
from dtr_lab.callbacks.routing_maps import RoutingMaps
from dtr_lab.callbacks.sample_grid import SampleGrid
from dtr_lab.callbacks.sample_quality import SampleQuality
from dtr_lab.callbacks.samples_writer import SamplesWriter
from dtr_lab.callbacks.task_affinity import TaskAffinity
from dtr_lab.callbacks.tensorboard_layout import TensorBoardLayout
from dtr_lab.callbacks.timestep_loss import TimestepLoss

__all__ = [
    "GradientConflict",
    "RoutingMaps",
    "SampleGrid",
    "SampleQuality",
    "SamplesWriter",
    "TaskAffinity",
    "TensorBoardLayout",
    "TimestepLoss",
]
