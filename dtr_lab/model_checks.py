"""What a DiffusionModule accepts: its options, its optimizer, and the checkpoints it loads.

`check_options` checks the config's values before anything is built, `check_optimizer` the optimizer's
and the lr schedule's options, each failing in one line that names the option. A checkpoint
goes through `check_checkpoint`, the one check every loader uses (the CLI before the trainer writes
anything, Lightning's own loads through on_load_checkpoint, dtr_lab.official, analysis/eval_noise.py):
what it was trained as (`identity`: the routing as a dict of its options, T, schedule, backbone, image
shape, MTL method with its options, position-embedding layout, guidance rule), then the shapes of its
tensors. `module`
is a dtr_lab.module.DiffusionModule, which imports this file.
"""

from __future__ import annotations

import re
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from dtr_lab.diffusion.samplers import (
    check_fixed_variance,
    check_sample_steps,
    guided_channel_count,
    respaced_timesteps,
)
from dtr_lab.errors import DTRLabError
from dtr_lab.models.dit import POS_EMBED_LAYOUTS
from dtr_lab.routing import identity_of, identity_text

SAMPLERS = ("ddpm", "ddim")
# torch.optim's words for a rejected option -> the init_args key and its valid range
OPTIMIZER_RANGES = {
    "learning rate": ("lr", "≥ 0"),
    "epsilon value": ("eps", "≥ 0"),
    "weight_decay value": ("weight_decay", "≥ 0"),
    "momentum value": ("momentum", "≥ 0"),
    "beta parameter at index 0": ("betas[0]", "in [0, 1)"),
    "beta parameter at index 1": ("betas[1]", "in [0, 1)"),
}
# what a checkpoint was trained as; checked on load (override one with model.allow_checkpoint_mismatch)
IDENTITY_FIELDS = (
    "routing", "num_timesteps", "schedule", "net", "image_size", "in_channels", "num_classes", "mtl",
    "pos_embed", "guidance",
)
# the position-embedding layout of a checkpoint saved before identities recorded it (dtr_lab before issue 21)
OLD_POS_EMBED = "row_first"


def check_options(options: dict[str, Any]) -> None:
    """The module's options (its __init__ arguments), each refused in one line naming it."""
    o = options
    if o["sampler"] not in SAMPLERS:
        raise DTRLabError(f"model.sampler={o['sampler']!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    if not 0.0 <= o["ema_decay"] < 1.0:
        raise DTRLabError(f"model.ema_decay={o['ema_decay']} must be in [0, 1); the papers use 0.9999")
    if o["num_samples"] < 1:
        raise DTRLabError(f"model.num_samples={o['num_samples']} must be a positive integer")
    if not 0.0 <= o["class_dropout_prob"] < 1.0:
        raise DTRLabError(f"model.class_dropout_prob={o['class_dropout_prob']} must be in [0, 1)")
    check_sample_steps(o["sample_steps"], o["num_timesteps"], "model.sample_steps")
    try:  # the samplers' own checks, named as the config's options
        check_fixed_variance(o["fixed_variance"])
        if o["guidance_channels"] is not None:
            guided_channel_count(o["guidance_channels"], o["in_channels"])
        if o["respacing"] != "even":  # an unknown name, or a stride that must give exactly sample_steps
            respaced_timesteps(o["num_timesteps"], o["sample_steps"], o["respacing"])
    except DTRLabError as err:
        raise DTRLabError(f"model.{err}") from None
    unknown = sorted(set(o["allow_checkpoint_mismatch"] or ()) - set(IDENTITY_FIELDS))
    if unknown:
        raise DTRLabError(
            f"model.allow_checkpoint_mismatch has unknown field {unknown[0]!r}; "
            f"choose from {', '.join(IDENTITY_FIELDS)}"
        )
    stated = getattr(o["mtl"], "intervals", None)
    if o["intervals"] is not None and stated is not None and o["intervals"] != stated:
        raise DTRLabError(
            f"model.intervals={o['intervals']} and model.mtl's intervals={stated} disagree; "
            "state the task intervals once (model.intervals)"
        )


def check_optimizer(module: L.LightningModule) -> None:
    """Build the configured optimizer and lr schedule once on stand-in parameters, so options they reject
    (lr < 0, betas outside [0, 1), a warm-up past the schedule's end) fail in one line before the run
    starts rather than in the trainer's setup. The module is only read: its parameters, optimizer and
    schedule state are untouched (the trainer builds the real ones)."""
    groups = [{"params": []}] + (module.mtl.param_groups() if module.mtl is not None else [])
    # each group's options (e.g. ANT-UW's own lr) over one stand-in tensor
    probe = [{**g, "params": [torch.zeros(1, requires_grad=True)]} for g in groups]
    # without model.optimizer, the module's default AdamW: nothing to check but the schedule, built on SGD
    factory = module.optimizer_factory or torch.optim.SGD
    try:
        optimizer = factory(probe)
    except (ValueError, TypeError) as err:
        # torch words it "Invalid learning rate: -0.001"; name the key and its range instead
        found = re.fullmatch(r"Invalid (.+?): (.+)", str(err))
        if found is None or found.group(1) not in OPTIMIZER_RANGES:
            raise DTRLabError(f"model.optimizer rejects its options: {err}; fix its init_args") from None
        key, valid = OPTIMIZER_RANGES[found.group(1)]
        raise DTRLabError(
            f"model.optimizer.init_args.{key}={found.group(2)} is invalid: it must be {valid}; fix it in "
            "the config or on the command line"
        ) from None
    if module.lr_schedule is not None:
        try:
            module.lr_schedule(optimizer)
        except DTRLabError:  # already one line naming the option (WarmupCosine's)
            raise
        except (ValueError, TypeError) as err:  # torch's schedulers' own checks
            raise DTRLabError(f"model.lr_schedule rejects its options: {err}; fix its init_args") from None


def identity(module: L.LightningModule) -> dict[str, Any]:
    """What the module is trained as: the fields a checkpoint must agree on to be loaded into it."""
    hp = module.hparams
    net = type(module.net).__name__ + (f"({module.net.size})" if module.net.size is not None else "")
    return {
        "routing": module.routing.identity(),
        "num_timesteps": hp.num_timesteps,
        "schedule": hp.schedule,
        "net": net,
        "image_size": hp.image_size,
        "in_channels": hp.in_channels,
        "num_classes": hp.num_classes,
        "mtl": mtl_identity(module),
        "pos_embed": module.net.pos_embed_layout,
        "guidance": module.guidance_channels,
    }


def mtl_identity(module: L.LightningModule, with_options: bool = True) -> str:
    """The MTL method as a checkpoint records it: its class, intervals and options (`MTLMethod.options`),
    e.g. "CAGrad(intervals=Intervals(...), c=0.4, rescale=1, multiply_by_k=False)"; "none" without one.
    with_options=False gives the form of dtr_lab before issue 32, which recorded no options."""
    if module.mtl is None:
        return "none"
    options = "".join(f", {k}={v!r}" for k, v in module.mtl.options().items()) if with_options else ""
    return f"{type(module.mtl).__name__}(intervals={module.tasks.config}{options})"


def check_checkpoint(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """The one check of a checkpoint against the module: identity, then shapes."""
    check_identity(module, checkpoint.get("dtr_lab_identity"))
    check_shapes(module, checkpoint.get("state_dict", {}))


def check_identity(module: L.LightningModule, saved: dict[str, Any] | None) -> None:
    """Fail with one line when a checkpoint was trained as something else (routing, T, backbone, ...);
    take its position-embedding layout (None or no pos_embed field: saved before layouts were recorded), and
    its guidance rule when the config states none."""
    if saved is None:
        rank_zero_warn(
            "the checkpoint has no dtr_lab identity (saved by an older dtr_lab): its routing, T, "
            "schedule, backbone, image shape and MTL method are not checked against this config"
        )
        saved = {}
    allowed = set(module.hparams.allow_checkpoint_mismatch or ())
    adopt_pos_embed_layout(module, saved.get("pos_embed", OLD_POS_EMBED), allowed)
    adopt_guidance(module, saved.get("guidance"))
    own = identity(module)
    if "routing" in saved:  # a repr string before the routing package: read as its identity dict
        saved = {**saved, "routing": identity_of(saved["routing"])}
    old_mtl = mtl_identity(module, with_options=False)
    if saved.get("mtl", own["mtl"]) != own["mtl"] and saved["mtl"] == old_mtl:
        rank_zero_warn(  # saved before identities recorded the method's options: they are not checked
            f"the checkpoint records its MTL method without options ({saved['mtl']}): they are not checked "
            f"against this config's ({own['mtl']})"
        )
        saved = {**saved, "mtl": own["mtl"]}
    for field in IDENTITY_FIELDS:
        if field in saved and saved[field] != own[field] and field not in allowed:
            theirs, ours = saved[field], own[field]
            if field == "routing":  # compared as dicts, shown as people read them
                theirs, ours = identity_text(theirs), identity_text(ours)
            raise DTRLabError(
                f"checkpoint was trained with {field}={theirs} but the config has {field}={ours}; "
                "use the config the checkpoint was trained with (its run directory's config.yaml), or "
                f"pass --model.allow_checkpoint_mismatch [{field}] to fine-tune across it deliberately"
            )


def adopt_guidance(module: L.LightningModule, saved: str | None) -> None:
    """A config that states no guidance rule samples with the checkpoint's (an imported DiT file's first3:
    DiT's forward_with_cfg); one that states another is refused by check_identity like any field."""
    if saved is None or module.hparams.guidance_channels is not None:
        return
    try:
        guided_channel_count(saved, module.hparams.in_channels)
    except DTRLabError:
        raise DTRLabError(
            f"checkpoint has guidance rule guidance={saved!r}, which dtr_lab does not know; load it with the "
            "dtr_lab version that wrote it, or state model.guidance_channels (all or first3)"
        ) from None
    module.guidance_channels = saved


def adopt_pos_embed_layout(module: L.LightningModule, saved: str, allowed: set[str]) -> None:
    """Give the network (and its EMA) the position-embedding layout a checkpoint was trained with, with a
    warning: never load its weights into a transposed token grid. A layout this dtr_lab does not know
    fails in one line; pos_embed in allowed keeps the config's layout deliberately."""
    own = module.net.pos_embed_layout
    if saved in (own, "none") or own == "none" or "pos_embed" in allowed:
        return
    if saved not in POS_EMBED_LAYOUTS:
        raise DTRLabError(
            f"checkpoint has position-embedding layout pos_embed={saved!r}, which dtr_lab does not know "
            f"(it knows {', '.join(POS_EMBED_LAYOUTS)}); load it with the dtr_lab version that wrote it"
        )
    for net in (module.net, module.ema.module):
        net.set_pos_embed_layout(saved)
    rank_zero_warn(
        f"the checkpoint was trained with the {saved} position embedding (dtr_lab before issue 21 when "
        f"its identity names none), the config asks for {own}: the network keeps the checkpoint's "
        f"{saved} layout (set model.net.init_args.pos_embed_layout: {saved} to say so)"
    )


def check_shapes(module: L.LightningModule, state: dict[str, torch.Tensor]) -> None:
    """Fail with one line when a checkpoint was saved from a differently shaped model."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if mismatched:
        k = mismatched[0]
        raise DTRLabError(
            f"checkpoint does not match the configured model: {k} has shape {tuple(state[k].shape)} "
            f"in the checkpoint but {tuple(own[k].shape)} here ({len(mismatched)} tensors differ); "
            "use the config the checkpoint was trained with (its run directory's config.yaml)"
        )
    if missing:
        raise DTRLabError(
            f"checkpoint does not match the configured model: it lacks {missing[0]} "
            f"({len(missing)} tensors missing); use the config the checkpoint was trained with"
        )
    if unexpected:
        raise DTRLabError(
            f"checkpoint does not match the configured model: it has {unexpected[0]}, which the model "
            f"lacks ({len(unexpected)} extra tensors); use the config the checkpoint was trained with"
        )
