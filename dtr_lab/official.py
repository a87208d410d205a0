"""Checkpoints of the official code in and out: `python -m dtr_lab.official import|export SRC DST --config …`.

The formats (what the official loaders read):
- DiT (facebookresearch/DiT): ``train.py`` saves {"model", "ema", "opt", "args"}; ``download.py``
  ``find_model`` takes "ema" if present, else the file is a bare state_dict (the public DiT-XL-2-256x256.pt
  is one: EMA weights). Keys from ``models.py``: timm's ``PatchEmbed`` (``x_embedder.proj``) and ``Mlp``
  (``mlp.fc1``/``fc2``), ``y_embedder.embedding_table`` (the null label last), and ``pos_embed``, a frozen
  parameter saved in the state_dict.
- DTR (byeongjun-park/DTR): the same DiT plus one ``TaskRouter`` per block, whose mask table is a saved
  buffer, ``blocks.{i}.routing._unit_mapping`` [T, C] (``models/taskrouting.py``: init_method DTR, or
  random, R-TR, drawn from NumPy's global RNG); ``train.py`` saves {"model", "ema", "opt", "config"}, the
  config an OmegaConf DictConfig (read by dtr_lab.storage.official_file). Unconditional models (FFHQ) have
  num_classes 1: one label row, no null row.
- Switch-DiT (byeongjun-park/Switch-DiT, import only): the same DiT plus one ``TaskMoE`` per block,
  ``routers.{i}.f_gate.1`` (the gate) and ``routers.{i}.experts.w``/``b`` (``models/MoE.py``,
  ``ParallelExperts``: x @ w_e + b_e, as dtr_lab's expert_weight), the ``DiffusionPrior`` window
  ``prior._unit_mapping`` [T, depth·E] and ``full_time`` (``models/DiT/models.py``); saved as DTR's. Its
  DTR baseline holds the tables as ``routers.{i}._unit_mapping``.

Importing checks everything the official file states against the dtr_lab config: the noise schedule its
train.py config names, tensor shapes, the position embedding (which layout: official column-first,
dtr_lab's former row-first, or neither), and for DTR every block's mask table (for Switch-DiT the prior's
window; for R-TR, whose tables are data, their shape and counts) against the configured routing's. The
result is a dtr_lab checkpoint that `validate`, `test` and `predict` take as --ckpt_path (`fit` refuses
it in one line: it holds no optimizer state to resume), with the
guidance rule of the code that wrote the file (DiT's first3, DTR's and Switch-DiT's all; unless the config
states one) and its training step (--step, else its train.py name's) as the step validate records at.
Exporting
writes the official train.py format with the network's own position embedding, so the official
``sample.py``/``sample_ddp.py`` (and the ADM evaluator on their samples) run a dtr_lab model; it refuses
what the official DiT cannot express (a U-Net, Switch-DiT's learned experts).
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

from dtr_lab.errors import DTRLabError, find_bad_input
from dtr_lab.model_checks import check_checkpoint
from dtr_lab.models.dit import POS_EMBED_LAYOUTS, DiT, sincos_pos_embed_2d
from dtr_lab.routing import own_parameters
from dtr_lab.storage.checkpoint_file import read_checkpoint
from dtr_lab.storage.official_file import OfficialFile, read_official_file
from dtr_lab.storage.temp_files import write_atomically

# dtr_lab name -> official name, for the tensors whose names differ (the rest are equal)
RENAMES = {
    "x_embedder.weight": "x_embedder.proj.weight",
    "x_embedder.bias": "x_embedder.proj.bias",
    "y_embedder.table.weight": "y_embedder.embedding_table.weight",
}
MLP = {".mlp.0.": ".mlp.fc1.", ".mlp.2.": ".mlp.fc2."}  # inside blocks: nn.Sequential -> timm's Mlp
TABLE = "blocks.{}.routing._unit_mapping"
SWITCH_TABLE = "routers.{}._unit_mapping"  # Switch-DiT's own DTR baseline (routing name "DTR")
LABELS = "y_embedder.embedding_table.weight"
T_BIAS = "t_embedder.mlp.2.bias"  # the timestep embedding's last bias: c = emb(t) + y_emb(y) adds to it
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


def check_expressible(net: torch.nn.Module, where: str, importing: bool = False) -> None:
    """The official layouts hold a DiT with a fixed (or no) mask table per block, or (importing) Switch-DiT's
    experts."""
    if not isinstance(net, DiT):
        fix = "import into a config whose model is a DiT" if importing else "export a dtr_lab DiT"
        raise DTRLabError(
            f"{where}: a {type(net).__name__} has no official DiT layout (the official DiT, DTR and "
            f"Switch-DiT code hold DiTs only); {fix}"
        )
    if not importing and net.router.learned:
        raise DTRLabError(
            f"{where}: {type(net.router).__name__} (learned experts) cannot be written as a plain DiT or DTR "
            "checkpoint, whose routing is a fixed mask table per block; export a DiT with fixed routing"
        )


def saved_tables(net: DiT) -> dict[str, int]:
    """The state_dict names of the routing's tables that are data (TableDataRouting's), by block; none
    where the tables are a function of the config (not saved)."""
    names = {id(buffer): name for name, buffer in net.state_dict(keep_vars=True).items()}
    if not getattr(net.router.strategy, "saved", False):
        return {}
    tables = (net.router.block_table(i) for i in range(len(net.blocks)))
    return {names[id(t)]: i for i, t in enumerate(tables) if id(t) in names}


def export_state(net: DiT) -> dict[str, torch.Tensor]:
    """The network's official state_dict: DiT keys, its own position embedding, DTR tables when routed."""
    state = {"pos_embed": net.pos_embed.detach().clone()}
    saved = saved_tables(net)  # written below under their official names
    routing = own_parameters(net)
    state |= {
        official_name(k, routing): v.detach().clone() for k, v in net.state_dict().items() if k not in saved
    }
    if net.router.enabled:
        state |= {TABLE.format(i): net.router.block_table(i).clone() for i in range(len(net.blocks))}
    if net.y_embedder is None:  # DTR's unconditional layout: num_classes 1, one label row, here adding 0
        state[LABELS] = torch.zeros(1, net.pos_embed.shape[-1])
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


def unconditional(official: dict[str, torch.Tensor], net: DiT, where: str) -> dict[str, torch.Tensor]:
    """DTR's and Switch-DiT's unconditional layout (num_classes 1: one label row e_0, no null row, every
    label 0, so c = emb(t) + e_0) in the config's terms: an unconditional model takes e_0 into the timestep
    embedding's last bias (exact but for float rounding); a 1-class model takes e_0 as its null row too."""
    labels = official.get(LABELS)
    if labels is None or labels.shape[0] != 1:
        if labels is not None and net.y_embedder is None:
            raise DTRLabError(
                f"{where}: a class-conditional checkpoint ({labels.shape[0]} label rows) but the config's "
                "model is unconditional (num_classes 0); use the data it was trained with, with its classes"
            )
        return official
    if net.y_embedder is not None:
        return {**official, LABELS: labels.expand(net.num_classes + 1, -1).clone()}
    if net.router.learned:  # Switch-DiT's gates read emb(t) without e_0: folding would move them
        raise DTRLabError(
            f"{where}: an unconditional Switch-DiT (one label row) cannot fold its label into the timestep "
            "embedding, which its gates read; use data of one class (an image folder with one class folder)"
        )
    rest = {k: v for k, v in official.items() if k != LABELS}
    return {**rest, T_BIAS: official[T_BIAS] + labels[0].to(official[T_BIAS].dtype)}


def check_tables(official: dict[str, torch.Tensor], net: DiT, where: str) -> tuple[set[str], str]:
    """Every block's official mask table against the configured routing's (for tables that are data, its
    shape and C_β count per row); the file's table names and their layout (DTR's or Switch-DiT's DTR
    baseline's)."""
    names = {k for k in official if k.endswith("._unit_mapping") and k != SWITCH_PRIOR}
    layout = SWITCH_TABLE if any(k.startswith("routers.") for k in names) else TABLE
    if names and not net.router.enabled:
        raise DTRLabError(
            f"{where}: a DTR checkpoint (routing._unit_mapping tables) but the config's model is unrouted; "
            "set model.routing to the routing it was trained with, e.g. DTRRouting with its beta"
        )
    router = net.router
    for i in range(len(net.blocks) if router.enabled else 0):
        table, own = official.get(layout.format(i)), router.block_table(i).cpu()
        if table is None:
            raise DTRLabError(
                f"{where}: block {i} has no mask table, but the config's {router.strategy!r} routes it; "
                "import into the config it was trained with (model.routing)"
            )
        if router.strategy.saved:  # the file's tables are the data: only their shape and count must agree
            fits = table.shape == own.shape and torch.equal(table.float().sum(1), own.sum(1))
            fits = fits and bool(((table == 0) | (table == 1)).all())
        else:
            fits = table.shape == own.shape and torch.equal(table.float(), own)
        if not fits:
            raise DTRLabError(
                f"{where}: block {i} has another mask table than the config's {router.strategy!r} "
                f"(T={router.num_timesteps}); set model.routing and model.num_timesteps to the ones it was "
                "trained with (DTR's sharing_ratio is beta; init_method DTR is DTRRouting, init_method "
                "random is TableDataRouting, which takes the file's tables)"
            )
    return names, layout


def import_state(
    official: dict[str, torch.Tensor], net: DiT, where: str
) -> tuple[dict[str, torch.Tensor], str]:
    """An official state_dict -> (the dtr_lab network's state_dict, its position-embedding layout)."""
    check_expressible(net, where, importing=True)
    if "pos_embed" not in official:
        raise DTRLabError(f"{where}: no pos_embed tensor, so this is not a DiT state_dict; pass one")
    layout = pos_embed_layout(official["pos_embed"], net, where)
    official = unconditional(official, net, where)
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
        tables, table_layout = {SWITCH_PRIOR, "full_time"}, ""  # the prior is the config's; full_time is T
    else:
        tables, table_layout = check_tables(official, net, where)
    own = net.state_dict()
    routing = own_parameters(net)
    given = {name: official[table_layout.format(i)] for name, i in saved_tables(net).items()}
    state = {}
    for name, tensor in own.items():
        theirs = given.get(name, official.get(official_name(name, routing)))
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
    extra = sorted(
        set(official) - {official_name(k, routing) for k in own if k not in given} - {"pos_embed"} - tables
    )
    if extra:
        raise DTRLabError(
            f"{where}: it has {extra[0]} ({len(extra)} tensors), which a DiT of the config lacks "
            "(another architecture?); official DiT, DTR and Switch-DiT checkpoints load"
        )
    return state, layout


def trained_routing(config: dict[str, Any]) -> dict[str, Any]:
    """The routing block of a DTR (``models.routing``) or Switch-DiT (``routing``) train.py config."""
    models = config.get("models")
    routing = models.get("routing") if isinstance(models, dict) else None
    routing = routing if isinstance(routing, dict) else config.get("routing")
    return routing if isinstance(routing, dict) else {}


def check_config(config: dict[str, Any], module: L.LightningModule, where: str) -> str:
    """What the file's train.py config states against the dtr_lab config: the noise schedule (the line
    saying which one the import used) and R-TR, whose tables only TableDataRouting takes."""
    ours = module.hparams.schedule
    general = config.get("general")
    theirs = general.get("schedule_name") if isinstance(general, dict) else None
    if theirs is not None and theirs != ours:
        raise DTRLabError(
            f"{where} was trained with the {theirs} noise schedule (its config's general.schedule_name) but "
            f"the dtr_lab config's is {ours}; import with --model.schedule {theirs}"
        )
    routing = trained_routing(config)
    if routing.get("init_method") == "random" and not getattr(module.net.router.strategy, "saved", False):
        raise DTRLabError(
            f"{where} is an R-TR checkpoint (init_method random), whose tables no seed draws again; import "
            f"with --model.routing dtr_lab.routing.TableDataRouting --model.routing.init_args.beta "
            f"{routing.get('sharing_ratio')}, which takes the file's tables"
        )
    if theirs is not None:
        return f"noise schedule {theirs}, as the file's config states"
    return (
        f"noise schedule {ours} assumed (the config's): the file states none, and DiT's train.py trains with "
        "linear; --model.schedule sets another"
    )


def written_by(official: OfficialFile) -> str:
    """The official code that wrote a file: "DTR/Switch-DiT" (their train.py, whose checkpoints hold a
    "config", or whose weights hold mask tables or a diffusion prior) or "DiT" (DiT's train.py, {"args"},
    or a bare state_dict such as the public DiT-XL-2-256x256.pt)."""
    model = official.states["model"]
    routed = SWITCH_PRIOR in model or any(k.endswith("routing._unit_mapping") for k in model)
    return "DTR/Switch-DiT" if official.hydra or routed else "DiT"


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
    official = read_official_file(src)
    code = written_by(official)
    where = f"official checkpoint {src}"
    schedule = check_config(official.config, module, where)
    loaded = {role: import_state(state, module.net, where) for role, state in official.states.items()}
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
        f"{step} ({known}), guidance_channels {module.guidance_channels} ({rule})\n{schedule}"
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
    call = ", ".join(f"{k}={v!r}" for k, v in args.items())
    if net.router.enabled:  # TaskRouter's tables are saved buffers: load_state_dict sets them, whatever
        # init_method drew (DTR's TaskRouter raises ValueError without one)
        strategy = net.router.strategy
        init = "random" if getattr(strategy, "per_block", False) else "DTR"
        routing = {"sharing_ratio": getattr(strategy, "beta", 1.0), "taskcount": net.router.num_timesteps}
        call += ", router=TaskRouter, " + ", ".join(f"{k}={v!r}" for k, v in routing.items())
        call += f", init_method={init!r}"
    return f"{dst}: the official {'DTR' if net.router.enabled else 'DiT'} models.py DiT({call}) loads it"


def official_args(net: DiT) -> dict[str, Any]:
    """The official DiT constructor's arguments for this network (the class-dropout row is the null label)."""
    d = net.pos_embed.shape[-1]
    unconditional = {"num_classes": 1, "class_dropout_prob": 0.0}  # one label row, no null row (DTR's FFHQ)
    return {
        "input_size": net.grid * net.patch_size,
        "patch_size": net.patch_size,
        "in_channels": net.in_channels,
        "hidden_size": d,
        "depth": len(net.blocks),
        "num_heads": net.blocks[0].attn.num_heads,
        "mlp_ratio": net.blocks[0].mlp[0].out_features / d,
        "learn_sigma": net.learn_sigma,
        **(unconditional if net.y_embedder is None else {"num_classes": net.num_classes}),
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
