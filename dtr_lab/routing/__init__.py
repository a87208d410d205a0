"""Routing: which channels of each block a timestep uses, as one protocol (dtr_lab.routing.base).

Fixed tables (tables.py: none, R-TR, DTR, tables as data), learned (switch.py: Switch-DiT), measured
(affinity.py). A new routing is one new file here, named in configs by its full path
(``dtr_lab.routing.<file>.<Class>``).
"""

from dtr_lab.routing.affinity import AffinityRouting
from dtr_lab.routing.base import (
    BaseRouter,
    Drawing,
    Routing,
    RoutingLoss,
    active_channels,
    check_beta,
    identity_of,
    identity_text,
    own_parameters,
    route,
    routers,
)
from dtr_lab.routing.switch import SwitchRouter, SwitchRouting
from dtr_lab.routing.tables import (
    DTRRouting,
    NoRouting,
    RandomRouting,
    Router,
    TableDataRouting,
    TableRouting,
)

__all__ = [
    "AffinityRouting",
    "BaseRouter",
    "DTRRouting",
    "Drawing",
    "NoRouting",
    "RandomRouting",
    "Router",
    "Routing",
    "RoutingLoss",
    "SwitchRouter",
    "SwitchRouting",
    "TableDataRouting",
    "TableRouting",
    "active_channels",
    "check_beta",
    "identity_of",
    "identity_text",
    "own_parameters",
    "route",
    "routers",
]
