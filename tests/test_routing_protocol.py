"""The routing protocol: every routing answers the same questions, so nothing outside dtr_lab/routing asks
which routing it has."""

from __future__ import annotations

import ast
import importlib
import re
from functools import partial

import pytest
import torch
from helpers import REPO

from dtr_lab import runs
from dtr_lab.errors import DTRLabError
from dtr_lab.model_checks import check_identity
from dtr_lab.models import DiT, UNet
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import (
    AffinityRouting,
    BaseRouter,
    Drawing,
    DTRRouting,
    RandomRouting,
    Routing,
    RoutingLoss,
    SwitchRouting,
    identity_of,
    own_parameters,
)

T = 20
AFFINITY = [[1.0, 0.2, -0.1], [0.2, 1.0, 0.3], [-0.1, 0.3, 1.0]]
# options of the routings that need some (a measured affinity) or whose defaults a T = 20 test would not
# tell apart; a routing not named here is built with its defaults
OPTIONS = {
    DTRRouting: {"alpha": 2.0, "beta": 0.5},
    RandomRouting: {"beta": 0.5, "seed": 4},
    SwitchRouting: {"seed": 0},
    AffinityRouting: {"source": AFFINITY, "beta": 0.5},
}


def discovered() -> dict[str, type[Routing]]:
    """Every routing of the package by its label: each class of a dtr_lab/routing/ file that declares a
    label (a new routing file is tested with no entry here). Labels are unique: runs tell arms apart by
    them."""
    found: dict[str, type[Routing]] = {}
    for path in sorted((REPO / "dtr_lab" / "routing").glob("*.py")):
        module = importlib.import_module(f"dtr_lab.routing.{path.stem}")
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, Routing) and cls.__module__ == module.__name__:
                if not cls.label:  # a family's base (TableRouting), not a routing
                    continue
                assert found.setdefault(cls.label, cls) is cls, f"two routings are labelled {cls.label!r}"
                assert "label" in vars(cls), f"{cls.__name__} inherits its label: declare its own"
    return found


def options(cls: type[Routing]) -> dict:
    """The test's options of a routing class: its own entry in OPTIONS, else its nearest base's."""
    return next((OPTIONS[base] for base in cls.__mro__ if base in OPTIONS), {})


ROUTINGS = {label: partial(cls, **options(cls)) for label, cls in discovered().items()}
# what dtr_lab before the routing package stored as a checkpoint's routing identity: repr strings
OLD_REPRS = {
    "vanilla": "NoRouting()",
    "dtr": "DTRRouting(alpha=2.0, beta=0.5)",
    "rtr": "RandomRouting(beta=0.5, seed=4, per_block=True)",
    "switch": "SwitchRouting(num_experts=3, k=2, w_jsd=1.0, alpha=4.0, seed=0)",
    "affinity": "AffinityRouting(beta=0.5, measured='inline', edges=None, "
    "affinity=[[1.0, 0.2, -0.1], [0.2, 1.0, 0.3], [-0.1, 0.3, 1.0]])",
}


@pytest.mark.parametrize("name", list(ROUTINGS))
@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_every_routing_answers_every_question(name, backbone):
    routing = ROUTINGS[name]()
    assert isinstance(routing, Routing)
    assert routing.label == name
    if backbone == "dit":
        net = DiT(8, 1, 10, T, routing, size="DiT-T/2")
    else:
        net = UNet(8, 1, 10, T, routing, size="UNet-T")
    assert isinstance(net.router, BaseRouter)
    t = torch.tensor([0, 7, T - 1])
    masks = net.router.masks(t, net.t_embedder(t))
    assert len(masks) == len(net.router.widths)  # one per routed block
    term = net.routing_loss(t, torch.Generator().manual_seed(0))
    assert term is None if name != "switch" else isinstance(term, RoutingLoss)
    drawing = net.routing_drawing()
    assert isinstance(drawing, Drawing) and drawing.learned == (name == "switch")
    assert drawing.tables and all(table.shape[0] == T for ts in drawing.tables.values() for table in ts)
    assert bool(own_parameters(net)) == (name == "switch")
    identity = routing.identity()
    assert identity["class"] == type(routing).__name__
    assert identity == ROUTINGS[name]().identity()  # a function of the options


def test_the_shipped_routings_are_discovered():
    assert {"vanilla", "dtr", "rtr", "switch", "affinity", "affinity_t"} <= set(ROUTINGS)


@pytest.mark.parametrize("name", list(OLD_REPRS))
def test_an_old_repr_identity_reads_as_today_s_dict(name):
    assert identity_of(OLD_REPRS[name]) == ROUTINGS[name]().identity()
    assert identity_of(ROUTINGS[name]().identity()) == ROUTINGS[name]().identity()  # a dict passes through


def module(routing: Routing) -> DiffusionModule:
    return DiffusionModule(net=partial(DiT, size="DiT-T/2"), routing=routing, num_timesteps=T, sample_steps=T)


def test_identity_survives_a_repr_change_and_old_checkpoints_still_load(monkeypatch):
    saved_new = module(DTRRouting(alpha=2.0, beta=0.5)).identity()
    saved_old = {**saved_new, "routing": OLD_REPRS["dtr"]}  # as dtr_lab before the routing package saved it
    monkeypatch.setattr(DTRRouting, "__repr__", lambda self: "a cosmetic change")
    own = module(DTRRouting(alpha=2.0, beta=0.5))
    check_identity(own, saved_new)
    check_identity(own, saved_old)
    other = module(DTRRouting(alpha=4.0, beta=0.5))
    for saved in (saved_new, saved_old):
        with pytest.raises(DTRLabError, match="checkpoint was trained with routing="):
            check_identity(other, saved)


def test_a_run_without_labels_yaml_reads_with_the_labels_its_routing_had():
    """Runs from before labels.yaml are labelled by runs.LEGACY_ROUTING_LABELS: those labels are the
    routings' own (a run labels itself by its routing's label since), and any other class by its name."""
    labels = {type(make()).__name__: label for label, make in ROUTINGS.items()}
    assert runs.LEGACY_ROUTING_LABELS.items() <= labels.items()
    for cls, label in runs.LEGACY_ROUTING_LABELS.items():
        assert runs.routing_label(f"dtr_lab.routing.{cls}") == label
    assert runs.routing_label("my_lab.MyRouting") == "myrouting"  # a routing of one's own
    assert runs.routing_label(None) == "vanilla"  # no routing: the module's default NoRouting


# ------------------------------------------------------------------------- nothing outside asks which
OUTSIDE = [p for d in ("dtr_lab", "analysis", "benchmarks") for p in (REPO / d).rglob("*.py")
           if "routing" not in p.relative_to(REPO).parts[:2]]
ASKING = [
    re.compile(r"isinstance\([^)]*(Routing|Router)\b"),  # a routing's or router's type
    re.compile(r"\bw_jsd\b"),  # Switch's option
    re.compile(r"[\"']router\."),  # the router's parameter names
]
# in the library, not even its name (a study's or benchmark's arms are named by the study: analysis/,
# benchmarks/ may compare arm names)
NAMED = re.compile(r"==\s*[\"'](rtr|dtr|switch|affinity|vanilla)[\"']")


def test_no_code_outside_the_package_asks_which_routing_it_has():
    found = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in OUTSIDE
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if any(pattern.search(line) for pattern in ASKING)
        or (p.relative_to(REPO).parts[0] == "dtr_lab" and NAMED.search(line))
    ]
    assert not found, found


def imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return found | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_the_package_imports_nothing_above_it():
    """dtr_lab.routing reads no files and no runs: it imports torch, numpy/scipy and dtr_lab's floor, and
    dtr_lab.runs only for the readers its ``run_options`` hold (the CLI calls them before a routing is
    built; torch-free, they never import a routing back)."""
    floor = {"dtr_lab.errors", "dtr_lab.seeds", "dtr_lab.mtl.intervals", "dtr_lab.runs",
             "dtr_lab.storage.labels"}  # labels: the routing's label and colour a run records
    for path in (REPO / "dtr_lab" / "routing").glob("*.py"):
        own = {m for m in imports(path) if m.startswith("dtr_lab")}
        assert own <= floor | {m for m in own if m.startswith("dtr_lab.routing")}, (path.name, own)
    for module in floor:  # and nothing on the floor imports routing back: no circle
        path = REPO / (module.replace(".", "/") + ".py")
        path = path if path.exists() else path.with_suffix("") / "__init__.py"  # a package
        assert not {m for m in imports(path) if m.startswith("dtr_lab.routing")}, module
