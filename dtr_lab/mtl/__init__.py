"""Diffusion timesteps as tasks: intervals, the run's task split, the MTL methods' protocol and methods
(uncertainty weighting, PCGrad, Nash-MTL, CAGrad), interval clustering."""

from dtr_lab.mtl.cagrad import CAGrad
from dtr_lab.mtl.intervals import Intervals, TaskIntervals
from dtr_lab.mtl.method import MTLMethod, TaskBatch, Update
from dtr_lab.mtl.nash import NashMTL, nash_weights
from dtr_lab.mtl.pcgrad import PCGrad, pcgrad
from dtr_lab.mtl.tasks import Tasks
from dtr_lab.mtl.uncertainty import UncertaintyWeighting

__all__ = [
    "Intervals",
    "TaskIntervals",
    "Tasks",
    "MTLMethod",
    "TaskBatch",
    "Update",
    "UncertaintyWeighting",
    "PCGrad",
    "pcgrad",
    "NashMTL",
    "CAGrad",
    "nash_weights",
]
