"""Checkpoints of the official code in and out: `python -m dtr_lab.official import|export SRC DST --config …`.

The formats (what the official loaders read):
- DiT (facebookresearch/DiT): ``train.py`` saves {"model", "ema", "opt", "args"}; ``download.py``
  ``find_model`` takes "ema" if present, else the file is a bare state_dict (the public DiT-XL-2-256x256.pt
  is one: EMA weights). Keys from ``models.py``: timm's ``PatchEmbed`` (``x_embedder.proj``) and ``Mlp``
  (``mlp.fc1``/``fc2``), ``y_embedder.embedding_table`` (the null label last), and ``pos_embed``, a frozen
  parameter saved in the state_dict.
- DTR (byeongjun-park/DTR): the same DiT plus one ``TaskRouter`` per block, whose mask table is a saved
  buffer, ``blocks.{i}.routing._unit_mapping`` [T, C] (``models/taskrouting.py``); ``train.py`` saves
  {"model", "ema", "opt", "config"}.
- Switch-DiT (byeongjun-park/Switch-DiT, import only): the same DiT plus one ``TaskMoE`` per block,
  ``routers.{i}.f_gate.1`` (the gate) and ``routers.{i}.experts.w``/``b`` (``models/MoE.py``,
  ``ParallelExperts``: x @ w_e + b_e, as dtr_lab's expert_weight), the ``DiffusionPrior`` window
  ``prior._unit_mapping`` [T, depth·E] and ``full_time`` (``models/DiT/models.py``); saved as DTR's.

Importing checks everything the official file states against the dtr_lab config: tensor shapes, the
position embedding (which layout: official column-first, dtr_lab's former row-first, or neither), and for
DTR every block's mask table (for Switch-DiT the prior's window) against the configured routing's. The
result is a dtr_lab checkpoint that `validate`, `test`, `predict` and `fit` take as --ckpt_path, with the
guidance rule of the code that wrote the file (DiT's first3, DTR's and Switch-DiT's all; unless the config
states one) and its training step (--step, else its train.py name's) as the step validate records at.
Exporting writes the official train.py format with the network's own position embedding, so the official
``sample.py``/``sample_ddp.py`` (and the ADM evaluator on their samples) run a dtr_lab model; it refuses
what the official DiT cannot express (a U-Net, Switch-DiT's learned experts, an unconditional model).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dtr_lab.checkpoint_file import check_archive, first_line, read_checkpoint
from dtr_lab.checkpointing import write_atomically
from dtr_lab.errors import DTRLabError, find_bad_input
from dtr_lab.model_checks import check_checkpoint
from dtr_lab.models.dit import POS_EMBED_LAYOUTS, DiT, sincos_pos_embed_2d
from dtr_lab.routing import own_parameters

# dtr_lab name -> official name, for the tensors whose names differ (the rest are equal)
RENAMES = {
    "x_embedder.weight": "x_embedder.proj.weight",
    "x_embedder.bias": "x_embedder.proj.bias",
    "y_embedder.table.weight": "y_embedder.embedding_table.weight",
}
MLP = {".mlp.0.": ".mlp.fc1.", ".mlp.2.": ".mlp.fc2."}  # inside blocks: nn.Sequential -> timm's Mlp
TABLE = "blocks.{}.routing._unit_mapping"
# Switch-DiT: dtr_lab's routing parameters <router>.experts.{i}.<name> -> the official routers.{i}.<name>
SWITCH = {"gate_weight": "f_gate.1.weight", "gate_bias": "f_gate.1.bias", "expert_weight": "experts.w",
          "expert_bias": "experts.b"}  # fmt: skip
SWITCH_PRIOR = "prior._unit_mapping"
# classifier-free guidance of the code that wrote a file (dtr_lab.diffusion.samplers.GUIDANCE_RULES): DiT's
# forward_with_cfg mixes the first 3 output channels, DTR's and Switch-DiT's every ε channel
GUIDANCE = {"DiT": "first3", "DTR/Switch-DiT": "all"}
# DiT's and DTR's train.py name a checkpoint by its step: f"{checkpoint_dir}/{train_steps:07d}.pt"
STEP_NAME = re.compile(r"(\d{7,})\.pt")


def official_name(name: str, routing: set[str] = frozenset()) -> str:
    """A dtr_lab DiT tensor's name in the official state_dict (routing: the names of the routing's own
    parameters, dtr_lab.routing.own_parameters: Switch's gates and experts)."""
    if name in RENAMES:
        return RENAMES[name]
    if name in routing:
        _, _, block, leaf = name.split(".")
        return f"routers.{block}.{SWITCH[leaf]}"
    for ours, theirs in MLP.items():
        if name.startswith("blocks.") and ours in name:
            return name.replace(ours, theirs)
    return name


def check_expressible(net: torch.nn.Module, where: str, learned: bool = False) -> None:
    """The official layouts hold a class-conditional DiT with a fixed (or no) mask table per block, or (in,
    learned) Switch-DiT's experts."""
    if not isinstance(net, DiT):
        raise DTRLabError(
            f"{where}: a {type(net).__name__} has no official DiT layout (the official DiT and DTR code hold "
            "DiTs only); export a dtr_lab DiT"
        )
    if not learned and net.router.learned:
        raise DTRLabError(
            f"{where}: {type(net.router).__name__} (learned experts) cannot be written as a plain DiT or DTR "
            "checkpoint, whose routing is a fixed mask table per block; export a DiT with fixed routing"
        )
    if net.y_embedder is None:
        raise DTRLabError(
            f"{where}: the model is unconditional (num_classes 0); the official DiT always adds a label "
            "embedding, so only class-conditional models can be exported"
        )


def export_state(net: DiT) -> dict[str, torch.Tensor]:
    """The network's official state_dict: DiT keys, its own position embedding, DTR tables when routed."""
    state = {"pos_embed": net.pos_embed.detach().clone()}
    state |= {official_name(k, own_parameters(net)): v.detach().clone() for k, v in net.state_dict().items()}
    if net.router.enabled:
        state |= {TABLE.format(i): net.router.table(i).clone() for i in range(len(net.blocks))}
    return state


def pos_embed_layout(official: torch.Tensor, net: DiT, where: str) -> str:
    """Which layout an official pos_embed (1, L, D) is in; one line if it is neither."""
    expected = tuple(net.pos_embed.shape)
    if tuple(official.shape) != expected:
        raise DTRLabError(
            f"{where}: pos_embed has shape {tuple(official.shape)} but the config's model has {expected} "
            "(tokens × width: check data.image_size, the model size and patch); use the config it was "
            "trained with"
        )
    for layout in POS_EMBED_LAYOUTS:
        if torch.allclose(official[0].float(), sincos_pos_embed_2d(expected[2], net.grid, layout), atol=1e-6):
            return layout
    raise DTRLabError(
        f"{where}: its pos_embed is neither the official column-first sin-cos embedding nor dtr_lab's "
        "row-first one (an unknown layout); it cannot be loaded without transposing or guessing"
    )


def import_state(
    official: dict[str, torch.Tensor], net: DiT, where: str
) -> tuple[dict[str, torch.Tensor], str]:
    """An official state_dict -> (the dtr_lab network's state_dict, its position-embedding layout)."""
    check_expressible(net, where, learned=True)
    if "pos_embed" not in official:
        raise DTRLabError(f"{where}: no pos_embed tensor, so this is not a DiT state_dict; pass one")
    layout = pos_embed_layout(official["pos_embed"], net, where)
    tables = {k for k in official if k.endswith("routing._unit_mapping")}
    switch = net.router.learned  # the official learned routing is Switch-DiT's
    if SWITCH_PRIOR in official and not switch:
        raise DTRLabError(
            f"{where}: a Switch-DiT checkpoint (routers.*, prior) but the config's routing is not "
            "SwitchRouting; set model.routing to SwitchRouting with its num_experts and k"
        )
    if switch:
        prior = official.get(SWITCH_PRIOR)
        own_prior = net.router.prior.cpu()
        if prior is None or prior.shape != own_prior.shape or not torch.equal(prior.float(), own_prior):
            raise DTRLabError(
                f"{where}: its diffusion prior is not the config's {net.router.strategy!r} "
                f"(T={net.router.num_timesteps}, depth × E slots); set model.routing's num_experts and k and "
                "model.num_timesteps to the ones it was trained with"
            )
        tables = {SWITCH_PRIOR, "full_time"}  # the prior is the config's; full_time is arange(T)
    elif tables and not net.router.enabled:
        raise DTRLabError(
            f"{where}: a DTR checkpoint (routing._unit_mapping tables) but the config's model is unrouted; "
            "set model.routing to the routing it was trained with, e.g. DTRRouting with its beta"
        )
    elif net.router.enabled:
        for i in range(len(net.blocks)):
            table = official.get(TABLE.format(i))
            own = net.router.table(i)
            if table is None or table.shape != own.shape or not torch.equal(table.float(), own.cpu()):
                what = "has no mask table" if table is None else "has another mask table"
                raise DTRLabError(
                    f"{where}: block {i} {what} than the config's {net.router.strategy!r} "
                    f"(T={net.router.num_timesteps}); set model.routing and model.num_timesteps to the ones "
                    "it was trained with (DTR's sharing_ratio is beta; init_method DTR/random is DTRRouting/"
                    "RandomRouting)"
                )
    own = net.state_dict()
    routing = own_parameters(net)
    state = {}
    for name, tensor in own.items():
        theirs = official.get(official_name(name, routing))
        if theirs is None:
            raise DTRLabError(
                f"{where}: it lacks {official_name(name, routing)}, which the config's model has; "
                "use the config it was trained with"
            )
        if theirs.shape != tensor.shape:
            raise DTRLabError(
                f"{where}: {official_name(name, routing)} has shape {tuple(theirs.shape)} but "
                f"{tuple(tensor.shape)} in the config's model; use the config it was trained with "
                "(model size, data.image_size, in_channels, num_classes, learn_sigma)"
            )
        state[name] = theirs.to(tensor.dtype)
    extra = sorted(set(official) - {official_name(k, routing) for k in own} - {"pos_embed"} - tables)
    if extra:
        raise DTRLabError(
            f"{where}: it has {extra[0]} ({len(extra)} tensors), which a DiT of the config lacks "
            "(another architecture?); official DiT, DTR and Switch-DiT checkpoints load"
        )
    return state, layout


def read_official(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], str]:
    """An official checkpoint's state_dicts by role ({"model", "ema"}, or the bare one as both), and the
    code that wrote it (written_by)."""
    where = f"official checkpoint {path}"
    check_archive(path, where, "pass the .pt written by the official train.py or download")
    try:  # train.py pickles its argparse args (DiT); tensors and these only, never arbitrary code
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DTRLabError(
            f"{where} cannot be read safely by torch.load ({first_line(err)}); save its state_dicts alone, "
            "e.g. torch.save({'model': ckpt['model'], 'ema': ckpt['ema']}, path)"
        ) from None
    if not isinstance(checkpoint, dict):
        raise DTRLabError(f"{where} holds no state_dict; pass an official DiT/DTR checkpoint")
    if "ema" in checkpoint or "model" in checkpoint:
        model = checkpoint.get("model", checkpoint.get("ema"))
        states = {"model": model, "ema": checkpoint.get("ema", model)}
    else:
        states = {"model": checkpoint, "ema": checkpoint}  # a bare state_dict, e.g. the public EMA weights
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
    return states, written_by(checkpoint, states["model"])


def written_by(checkpoint: dict[str, Any], model: dict[str, torch.Tensor]) -> str:
    """The official code that wrote a file: "DTR/Switch-DiT" (their train.py, whose checkpoints hold a
    "config", or whose weights hold mask tables or a diffusion prior) or "DiT" (DiT's train.py, {"args"},
    or a bare state_dict such as the public DiT-XL-2-256x256.pt)."""
    routed = SWITCH_PRIOR in model or any(k.endswith("routing._unit_mapping") for k in model)
    return "DTR/Switch-DiT" if "config" in checkpoint or routed else "DiT"


def official_step(src: Path, stated: int | None) -> tuple[int, str]:
    """The training step of an official file, and how it is known: stated (--step), else its train.py
    name's (0400000.pt), else 0 (the public DiT-XL-2-256x256.pt states none)."""
    if stated is not None:
        if stated < 0:
            raise DTRLabError(f"--step={stated} must be ≥ 0: the official file's training step")
        return stated, "given by --step"
    named = STEP_NAME.fullmatch(src.name)
    if named:
        return int(named.group(1)), "from its train.py name"
    return 0, "unknown: give --step N to record its analyses at its training step"


def check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """DST may be written: never SRC itself (by any name: a symlink, a hard link, another path), an
    existing file only with --overwrite, never a folder or a path under a file. Checked before SRC is
    read or the model built, so a refusal costs nothing."""
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise DTRLabError(
            f"DST {dst} is SRC {src} (the same file): writing it would lose the checkpoint being read, "
            "even with --overwrite; give another DST"
        )
    if dst.is_dir():
        raise DTRLabError(f"DST {dst} is a folder; give the file to write, e.g. {dst / src.name}")
    folder = next(p for p in dst.parents if p.exists())  # the folders below it are made when written
    if not folder.is_dir():
        raise DTRLabError(f"DST {dst}: {folder} is a file, not a folder; give a DST inside a folder")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise DTRLabError(f"DST {dst} exists; give another DST, or --overwrite to replace it")


def build_module(config: list[str]) -> L.LightningModule:
    """The DiffusionModule of a dtr_lab config (the same options as `python -m dtr_lab`)."""
    from dtr_lab.cli import build_cli  # the CLI imports every data module; only the command needs it

    return build_cli([*config, "--trainer.logger", "false"], run=False).model


def import_checkpoint(src: Path, dst: Path, config: list[str], step: int | None = None) -> str:
    """Official checkpoint -> dtr_lab checkpoint for the config's model, at its training step (`step`, else
    its name's) with its code's guidance rule unless the config states one; returns what it wrote."""
    step, known = official_step(src, step)
    module = build_module(config)
    states, code = read_official(src)
    where = f"official checkpoint {src}"
    loaded = {role: import_state(state, module.net, where) for role, state in states.items()}
    layout = loaded["model"][1]
    for net, role in ((module.net, "model"), (module.ema.module, "ema")):
        net.set_pos_embed_layout(layout)
        net.load_state_dict(loaded[role][0])
    stated = module.hparams.guidance_channels
    module.guidance_channels = stated or GUIDANCE[code]
    checkpoint = {
        "state_dict": module.state_dict(),
        "dtr_lab_identity": module.identity(),
        "dtr_lab_official": {"source": str(src), "code": code, "step": step},
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": step,  # where validate records its analyses (DiffusionModule.checkpoint_step)
    }
    write_atomically(dst, lambda f: torch.save(checkpoint, f), what="DST")
    rule = "the config's" if stated else f"{code}'s forward_with_cfg"
    return (
        f"{dst}: {module.identity()['net']}, {layout} position embedding, model and EMA from {src}, step "
        f"{step} ({known}), guidance_channels {module.guidance_channels} ({rule})"
    )


def export_checkpoint(src: Path, dst: Path, config: list[str]) -> str:
    """dtr_lab checkpoint -> official train.py format {"model", "ema", "args"}; returns what it wrote."""
    module = build_module(config)
    check_expressible(module.net, f"dtr_lab checkpoint {src}")
    checkpoint = read_checkpoint(src, option="dtr_lab checkpoint")
    try:
        check_checkpoint(module, checkpoint)
    except DTRLabError as err:
        raise DTRLabError(f"{src}: {err}") from None
    module.load_state_dict(checkpoint["state_dict"])
    net = module.net
    args = official_args(net)
    official = {"model": export_state(net), "ema": export_state(module.ema.module), "args": args}
    write_atomically(dst, lambda f: torch.save(official, f), what="DST")
    call = ", ".join(f"{k}={v}" for k, v in args.items())
    if net.router.enabled:  # TaskRouter's tables are saved buffers: load_state_dict sets them
        call += f", router=TaskRouter, taskcount={net.router.num_timesteps}"
    return f"{dst}: the official {'DTR' if net.router.enabled else 'DiT'} models.py DiT({call}) loads it"


def official_args(net: DiT) -> dict[str, Any]:
    """The official DiT constructor's arguments for this network (the class-dropout row is the null label)."""
    d = net.pos_embed.shape[-1]
    return {
        "input_size": net.grid * net.patch_size,
        "patch_size": net.patch_size,
        "in_channels": net.in_channels,
        "hidden_size": d,
        "depth": len(net.blocks),
        "num_heads": net.blocks[0].attn.num_heads,
        "mlp_ratio": net.blocks[0].mlp[0].out_features / d,
        "num_classes": net.num_classes,
        "learn_sigma": net.learn_sigma,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dtr_lab.official",
        description="official DiT/DTR/Switch-DiT checkpoints in (import), DiT/DTR out (export); the other "
        "options are the dtr_lab config of the model (--config ...), as for python -m dtr_lab",
    )
    parser.add_argument("command", choices=("import", "export"))
    parser.add_argument("src", type=Path, help="import: an official .pt; export: a dtr_lab .ckpt")
    parser.add_argument("dst", type=Path, help="import: the dtr_lab .ckpt to write; export: the official .pt")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DST if it exists (never when it is SRC itself)"
    )
    parser.add_argument(
        "--step", type=int, help="import: the official file's training step, where validate records its "
        "analyses (default: its train.py name's, 0400000.pt, else 0)",
    )  # fmt: skip
    args, config = parser.parse_known_args(argv)
    try:
        if args.step is not None and args.command == "export":
            raise DTRLabError("--step is an import option (the official file's training step); drop it")
        check_destination(args.src, args.dst, args.overwrite)
        if args.command == "import":
            print(f"wrote {import_checkpoint(args.src, args.dst, config, args.step)}")
        else:
            print(f"wrote {export_checkpoint(args.src, args.dst, config)}")
    except Exception as exc:
        bad_input = find_bad_input(exc)
        if bad_input is None:
            raise
        print(f"dtr_lab: error: {bad_input}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
