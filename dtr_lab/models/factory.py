"""How the module asks for a network: a class and its options, completed by the run's shapes."""

from __future__ import annotations

from collections.abc import Callable

from dtr_lab.models.denoiser import Denoiser
from dtr_lab.routing import Routing

# (input_size, in_channels, num_classes, num_timesteps, routing) -> network
NetFactory = Callable[[int, int, int, int, Routing], Denoiser]
