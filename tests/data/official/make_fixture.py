"""Writes the official-code fixture of tests/test_official.py: run it with the official repositories, never
imported by the suite (they need timm, hydra and OmegaConf, which dtr_lab does not depend on).

    python tests/data/official/make_fixture.py DIT_REPO DTR_REPO SWITCH_REPO OUT_DIR
    python tests/data/official/make_fixture.py --guided DIT_REPO OUT_DIR

DIT_REPO: facebookresearch/DiT (ed81ce2), DTR_REPO: byeongjun-park/DTR (97df445), SWITCH_REPO:
byeongjun-park/Switch-DiT (12fa9a5), each a plain checkout, in a Python with torch, timm, scipy, hydra-core
and omegaconf (made with hydra-core 1.3.2 and omegaconf 2.3.0: the 1.0.5 that DTR pins needs an omegaconf
2.0 that does not install on Python 3.11; the pickled DictConfig has the same classes).
A 4-block, 4-wide DiT on 8×8×1 inputs, patch 2, 10 classes, learned σ, every weight but the fixed
position embedding drawn N(0, 0.3²) (adaLN-Zero would otherwise output zeros), a second draw as the EMA:
- dit: the official DiT, saved with train.py's argparse args;
- dtr: DTR's TaskRouter (init_method DTR, β = 0.5, T = 100), linear schedule (DTR's example_script.sh);
- rtr: the same with init_method random (R-TR: tables from NumPy's global RNG, seeded 0 here), cosine
  schedule (DTR's base_config.yaml);
- dtr_uncond: dtr with one class, FFHQ-style (num_classes 1: one label row, no null row; label 0), cosine;
- switch: Switch-DiT's TaskMoE routers and DiffusionPrior (DMoE: E = 3, k = 2, T = 100), linear;
- switch_dtr: Switch-DiT's own DTR baseline (routing DTR: α = 4, β = 0.5, T = 100), linear.
The DTR and Switch-DiT files hold the hydra config exactly as their train.py saves it: composed from the
repository's config/ (its two `hydra/..._logging: disabled` defaults written as `override ...`, the form
hydra ≥ 1.1 takes), the sizes set by overrides, `models.param.latent_size = general.image_size // 8` as
train.py sets it, the real OmegaConf DictConfig pickled in. Each is saved as its train.py saves it, less the
optimizer state (size). {kind}_outputs.pt: the inputs and both models' outputs.

--guided writes dit_guided.pt: DiT's ``sample.py`` (its ``main``, less the VAE decode and the image file)
on a 4-channel latent DiT of the same size (random weights as above, learned σ), 4 labels, cfg scale 1.5
(DTR's), 10 respaced steps of T = 1000 (``create_diffusion("10")``: linear β, learned range variance),
``clip_denoised=False``: the weights, z, the labels, the noise ``p_sample`` drew at each step for the
labelled half (``th.randn_like``, recorded as it is drawn, values unchanged) and the latents sample.py
would decode.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

SIZE = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=4, depth=4, num_heads=4)
TINY = ["general.image_size=64", "data.num_classes=10"]  # latent 64 // 8 = 8, as SIZE
REPO_OF = {"dit": 0, "dtr": 1, "rtr": 1, "dtr_uncond": 1, "switch": 2, "switch_dtr": 2}
OVERRIDES = {
    "dtr": [
        "general.schedule_name=linear",
        "models.routing.sharing_ratio=0.5",
        "models.routing.taskcount=100",
    ],
    "rtr": [
        "models.routing.sharing_ratio=0.5",
        "models.routing.taskcount=100",
        "models.routing.init_method=random",
    ],
    "dtr_uncond": [
        "models.routing.sharing_ratio=0.5",
        "models.routing.taskcount=100",
        "data.num_classes=1",
        "data.is_uncond=true",
        "data.name=FFHQ",
    ],
    "switch": ["general.schedule_name=linear", "routing.taskcount=100"],
    "switch_dtr": [
        "general.schedule_name=linear",
        "routing=DTR",
        "routing.param.beta=0.5",
        "routing.param.taskcount=100",
    ],
}


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


def train_config(repo: str, overrides: list[str]):
    """The DictConfig that the repository's train.py gets from @hydra.main, with its latent_size set."""
    from hydra import compose, initialize_config_dir

    folder = Path(tempfile.mkdtemp()) / "config"
    shutil.copytree(f"{repo}/config", folder)
    base = folder / "base_config.yaml"
    base.write_text(base.read_text().replace("  - hydra/", "  - override hydra/"))
    with initialize_config_dir(config_dir=str(folder), version_base="1.1"):
        cfg = compose(config_name="base_config.yaml", overrides=overrides)
    cfg.models.param.latent_size = cfg.general.image_size // 8  # train.py
    return cfg


def build(repo: str, kind: str, cfg) -> torch.nn.Module:
    sys.path.insert(0, repo)
    if kind == "dit":
        from models import DiT

        return DiT(**SIZE, num_classes=10, learn_sigma=True)
    num_classes = cfg.models.param.num_classes
    if kind.startswith("switch"):
        sys.path.insert(0, f"{repo}/models/parallel_linear")
        from models.DiT.models import DiT
        from models.MoE import TaskMoE
        from models.taskrouting import TaskRouter

        router = TaskMoE if cfg.routing.name == "DMoE" else TaskRouter  # as create_model.py chooses
        return DiT(
            **SIZE, num_classes=num_classes, learn_sigma=True, router=router, routing_config=cfg.routing
        )
    from models.DiT.models import DiT
    from models.taskrouting import TaskRouter

    np.random.seed(0)  # init_method random draws from NumPy's global RNG
    routing = cfg.models.routing  # as create_model.py passes it
    return DiT(
        **SIZE,
        num_classes=num_classes,
        learn_sigma=True,
        router=TaskRouter,
        sharing_ratio=routing.sharing_ratio,
        taskcount=routing.taskcount,
        init_method=routing.init_method,
    )


def one(kind: str, repo: str, out: Path) -> None:
    """One official model in this process (both repos have a top-level `models`)."""
    cfg = None if kind == "dit" else train_config(repo, [*TINY, *OVERRIDES[kind]])
    model = build(repo, kind, cfg).eval()
    states = {"model": randomise(model, 1), "ema": randomise(model, 2)}
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 37, 60, 99])
    # 10: the null label of classifier-free guidance; unconditional: train.py's zeros_like(y)
    y = torch.zeros(4, dtype=torch.long) if kind == "dtr_uncond" else torch.tensor([0, 3, 9, 10])
    outputs = {"x": x, "t": t, "y": y}
    for which, state in states.items():
        model.load_state_dict(state)
        with torch.no_grad():
            outputs[which] = model(x, t, y)
    if kind == "dit":
        # train.py's args: the image size in pixels, 8× the latent input_size
        extra = {"args": argparse.Namespace(model="DiT-tiny", image_size=64, num_classes=10)}
    else:
        extra = {"config": cfg}
    torch.save({**states, **extra}, out / f"{kind}_tiny.pt")
    torch.save(outputs, out / f"{kind}_outputs.pt")


def guided(repo: str, out: Path) -> None:
    """DiT's sample.py on a tiny 4-channel latent DiT, its per-step noise recorded (see --guided)."""
    sys.path.insert(0, repo)
    from diffusion import create_diffusion
    from models import DiT

    model = DiT(**{**SIZE, "in_channels": 4}, learn_sigma=True).eval()
    state = randomise(model, 4)
    drawn = []
    randn_like = torch.randn_like

    def recorded(x, *args, **kwargs):  # p_sample's noise, as drawn (the global RNG, as in sample.py)
        noise = randn_like(x, *args, **kwargs)
        drawn.append(noise.clone())
        return noise

    torch.randn_like = recorded
    # sample.py's main from here (seed 0), with this model, 10 classes, 10 steps and cfg scale 1.5
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    diffusion = create_diffusion(str(10))
    class_labels = [3, 0, 9, 5]
    n = len(class_labels)
    z = torch.randn(n, 4, 8, 8)
    y = torch.tensor(class_labels)
    z = torch.cat([z, z], 0)
    y_null = torch.tensor([10] * n)
    y = torch.cat([y, y_null], 0)
    model_kwargs = dict(y=y, cfg_scale=1.5)
    samples = diffusion.p_sample_loop(
        model.forward_with_cfg, z.shape, z, clip_denoised=False, model_kwargs=model_kwargs, progress=False,
        device="cpu",
    )
    samples, _ = samples.chunk(2, dim=0)  # Remove null class samples
    torch.randn_like = randn_like
    # the first half alone: forward_with_cfg reads x[:n] only, so the null half's noise reaches no sample
    fixture = {"model": state, "z": z[:n], "y": y[:n], "noise": torch.stack(drawn)[:, :n], "samples": samples,
               "cfg_scale": 1.5, "steps": 10}  # fmt: skip
    torch.save(fixture, out / "dit_guided.pt")


if __name__ == "__main__":
    if sys.argv[1] == "--guided":
        Path(sys.argv[3]).mkdir(parents=True, exist_ok=True)
        guided(sys.argv[2], Path(sys.argv[3]))
    elif sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
    else:
        repos, out = sys.argv[1:4], sys.argv[4]
        Path(out).mkdir(parents=True, exist_ok=True)
        for kind, repo in REPO_OF.items():
            subprocess.run([sys.executable, __file__, "--one", kind, repos[repo], out], check=True)
