"""Diffusion timesteps as tasks: intervals, uncertainty weighting, PCGrad/Nash-MTL, interval clustering."""

from dtr_lab.mtl.intervals import Intervals, TaskIntervals
from dtr_lab.mtl.nash import NashMTL, nash_weights
from dtr_lab.mtl.pcgrad import PCGrad, pcgrad
from dtr_lab.mtl.uncertainty import UncertaintyWeighting

__all__ = [
    "Intervals",
    "TaskIntervals",
    "UncertaintyWeighting",
    "PCGrad",
    "pcgrad",
    "NashMTL",
    "nash_weights",
]
