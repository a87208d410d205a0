"""An official DiT/DTR/Switch-DiT checkpoint file read without running code from it, its config included.

DiT's train.py pickles its argparse ``args``; DTR's and Switch-DiT's pickle their hydra ``config``, an
OmegaConf ``DictConfig``, which holds what an import must check (the noise schedule, the image size, the
classes, the routing). Both are read by ``torch.load(weights_only=True)``: torch's restricted unpickler,
which builds tensors and plain containers and calls nothing but torch's tensor rebuilders and the globals
allowed here by name. The OmegaConf names are allowed as inert stand-ins (:class:`OmegaConfData`, a class
with no methods: the unpickler fills its ``__dict__`` and calls nothing of it), so no OmegaConf code runs,
OmegaConf need not be installed, and a file naming any other global is refused before anything is built.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.storage.checkpoint_file import check_archive, first_line

# what OmegaConf 2.0-2.3 pickles a DictConfig of plain values as: its containers, value nodes and
# metadata (dataclasses), typing.Any and the builtin types as metadata values, and the resolver cache
OMEGACONF = [
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    *(f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode")),
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "typing.Any",
    "builtins.dict",
    "builtins.list",
]


class OmegaConfData:
    """An OmegaConf object as data: a container's ``_content`` or a node's ``_val`` (no methods run)."""


def empty_dict(*_: Any) -> dict:
    """``collections.defaultdict(factory)`` (OmegaConf's resolver cache) as a plain dict: the factory, an
    allowed global itself, is never called."""
    return {}


SAFE_GLOBALS = [
    argparse.Namespace,  # DiT's args: the unpickler fills its __dict__
    *((type(name.rsplit(".", 1)[1], (OmegaConfData,), {}), name) for name in OMEGACONF),
    (empty_dict, "collections.defaultdict"),
]


class OfficialFile(NamedTuple):
    """An official checkpoint: its state_dicts by role ({"model", "ema"}), its config as plain data ({}
    where it has none: a bare state_dict; DiT's args as a dict), and whether that config is DTR's or
    Switch-DiT's hydra "config" (DiT's train.py saves "args")."""

    states: dict[str, dict[str, torch.Tensor]]
    config: dict[str, Any]
    hydra: bool = False


def plain(obj: Any) -> Any:
    """Stand-ins, Namespaces and containers -> dicts, lists and values."""
    if isinstance(obj, OmegaConfData):
        fields = vars(obj)
        return plain(fields["_val"] if "_val" in fields else fields.get("_content"))
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


INTERPOLATION = re.compile(r"\$\{([\w.]+)\}")


def resolve(value: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """A value with OmegaConf's ``${a.b}`` interpolations resolved against the config (a whole-value one
    keeps its type, e.g. ``num_classes: ${data.num_classes}``); unresolvable ones are left as text."""
    if isinstance(value, dict):
        return {k: resolve(v, root, depth) for k, v in value.items()}
    if not isinstance(value, str) or depth > 8 or "${" not in value:  # depth: a cycle a -> b -> a
        return value

    def lookup(path: str) -> Any:
        node: Any = root
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                return "${" + path + "}"
            node = node[key]
        return resolve(node, root, depth + 1)

    whole = INTERPOLATION.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return INTERPOLATION.sub(lambda m: str(lookup(m.group(1))), value)


def read_official_file(path: Path) -> OfficialFile:
    """An official checkpoint's state_dicts by role ({"model", "ema"}, or the bare one as both) and config."""
    where = f"official checkpoint {path}"
    check_archive(path, where, "pass the .pt written by the official train.py or download")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DTRLabError(
            f"{where} was refused by the restricted unpickler ({first_line(err)}); only DiT, DTR and "
            "Switch-DiT train.py files load: tensors, argparse args, an OmegaConf config of plain values"
        ) from None
    if not isinstance(checkpoint, dict):
        raise DTRLabError(f"{where} holds no state_dict; pass an official DiT/DTR checkpoint")
    if "ema" in checkpoint or "model" in checkpoint:
        model = checkpoint.get("model", checkpoint.get("ema"))
        states = {"model": model, "ema": checkpoint.get("ema", model)}
        raw = plain(checkpoint.get("config", checkpoint.get("args", {})))
        config = resolve(raw, raw) if isinstance(raw, dict) else {}
        hydra = "config" in checkpoint
    else:
        states = {"model": checkpoint, "ema": checkpoint}  # a bare state_dict, e.g. the public EMA weights
        config, hydra = {}, False
    for role, state in states.items():  # tensors only: anything else has no shape to check
        if not isinstance(state, dict):
            bad = f"{role!r} is of type {type(state).__name__}"
        else:
            name = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
            bad = None if name is None else f"{role!r} entry {name!r} is of type {type(state[name]).__name__}"
        if bad:
            raise DTRLabError(
                f"{where}: its {bad}, not a tensor, so this is no state_dict; pass an official DiT, DTR or "
                "Switch-DiT checkpoint (train.py's {'model', 'ema', ...} or a bare state_dict)"
            )
    return OfficialFile(states, config, hydra)
