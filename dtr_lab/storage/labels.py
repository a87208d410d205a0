"""A run's own labels, recorded when it starts (``labels.yaml``), and the colour of a label.

A run writes ``labels.yaml`` beside its ``config.yaml`` before the first step: its routing's ``label``
(the routing object's, so a routing from any module labels itself) and that label's colour. Readers
(dtr_lab.runs) label the run by this file, never by reading the source of a routing class; a run from
before the file is labelled from its config (dtr_lab.runs.LEGACY_ROUTING_LABELS).

A label's colour is a stable hash (MD5, the same in every process) of the label into PALETTE, 48 colours
(16 hues 22.5° apart at three lightnesses): it never runs out and needs no list of labels. Two labels can
hash to one colour; a figure that shows both gives the later one (in label order) the next free colour
of the palette (dtr_lab.plots.palette). No torch, matplotlib or pandas: the CLI writes this file.
"""

from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path

import yaml

FILE = "labels.yaml"
HUES, LIGHTNESS, SATURATION = 16, (0.28, 0.37, 0.46), 0.72  # the lightest yellow still reads on white
# hue-major, each hue at three lightnesses, then the hues in the order 0, 7, 14, 5, … (a step of 7 of 16
# hues, 157.5°): the next slot a colliding label takes is another lightness, then a far hue
PALETTE = tuple(
    "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colorsys.hls_to_rgb(h * 7 % HUES / HUES, light,
                                                                             SATURATION)))
    for h in range(HUES)
    for light in LIGHTNESS
)


def slot(label: str) -> int:
    """The label's place in PALETTE: its MD5 digest modulo the palette's size."""
    return int(hashlib.md5(str(label).encode()).hexdigest(), 16) % len(PALETTE)


def colour(label: str) -> str:
    """The colour of a label ("#rrggbb"), the same in every figure and process."""
    return PALETTE[slot(label)]


def write(run_dir: str | Path, routing: str) -> None:
    """RUN_DIR/labels.yaml: the run's routing label and its colour (the CLI writes it as the run starts)."""
    text = yaml.safe_dump({"routing": routing, "colours": {routing: colour(routing)}}, sort_keys=False)
    (Path(run_dir) / FILE).write_text(text)


def read(run_dir: str | Path) -> dict:
    """What RUN_DIR/labels.yaml records: ``routing`` (a label, where recorded) and ``colours`` (label ->
    colour, {} where none); a missing, cut-off or malformed file records nothing."""
    file = Path(run_dir) / FILE
    try:
        recorded = yaml.safe_load(file.read_text()) if file.is_file() else None
    except yaml.YAMLError:
        recorded = None
    recorded = recorded if isinstance(recorded, dict) else {}
    colours = recorded.get("colours")
    out = {"colours": {str(k): str(v) for k, v in colours.items()} if isinstance(colours, dict) else {}}
    if isinstance(recorded.get("routing"), str) and recorded["routing"]:
        out["routing"] = recorded["routing"]
    return out
