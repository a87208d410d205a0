"""dtr_lab: diffusion training as multi-task learning, with Denoising Task Routing."""

__version__ = "0.1.0"
