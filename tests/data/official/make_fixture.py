"""Writes the official-code fixture of tests/test_official.py: run it with the official repositories, never
imported by the suite (they need timm, which dtr_lab does not depend on).

    python tests/data/official/make_fixture.py DIT_REPO DTR_REPO SWITCH_REPO OUT_DIR
    python tests/data/official/make_fixture.py --guided DIT_REPO OUT_DIR

DIT_REPO: facebookresearch/DiT (ed81ce2), DTR_REPO: byeongjun-park/DTR (97df445), SWITCH_REPO:
byeongjun-park/Switch-DiT (12fa9a5), each a plain checkout, in a Python with torch, timm and scipy.
A 4-block, 4-wide DiT on 8×8×1 inputs, patch 2, 10 classes, learned σ, every weight but the fixed
position embedding drawn N(0, 0.3²) (adaLN-Zero would otherwise output zeros), a
second draw as the EMA; the DTR model is the same network with its TaskRouter (β = 0.5, T = 100), the
Switch-DiT one with its TaskMoE routers and DiffusionPrior (DMoE: E = 3, k = 2, T = 100). Each
checkpoint is saved as the official train.py saves it, less the optimizer state (size); the DTR and
Switch-DiT ones' "config" (an OmegaConf object there) is a plain dict. outputs.pt: the inputs and both
models' outputs.

--guided writes dit_guided.pt: DiT's ``sample.py`` (its ``main``, less the VAE decode and the image file)
on a 4-channel latent DiT of the same size (random weights as above, learned σ), 4 labels, cfg scale 1.5
(DTR's), 10 respaced steps of T = 1000 (``create_diffusion("10")``: linear β, learned range variance),
``clip_denoised=False``: the weights, z, the labels, the noise ``p_sample`` drew at each step for the
labelled half (``th.randn_like``, recorded as it is drawn, values unchanged) and the latents sample.py
would decode.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

SIZE = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=4, depth=4, num_heads=4, num_classes=10)


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


def build(repo: str, kind: str) -> torch.nn.Module:
    sys.path.insert(0, repo)
    if kind == "dit":
        from models import DiT

        return DiT(**SIZE, learn_sigma=True)
    if kind == "switch":
        sys.path.insert(0, f"{repo}/models/parallel_linear")
        from models.DiT.models import DiT
        from models.MoE import TaskMoE

        class Config(dict):  # the OmegaConf config's attribute access
            __getattr__ = dict.__getitem__

        routing = Config(name="DMoE", taskcount=100, w_JSD=1.0, param=Config(num_experts=3, k=2))
        return DiT(**SIZE, learn_sigma=True, router=TaskMoE, routing_config=routing)
    from models.DiT.models import DiT
    from models.taskrouting import TaskRouter

    routing = dict(router=TaskRouter, sharing_ratio=0.5, taskcount=100, init_method="DTR")
    return DiT(**SIZE, learn_sigma=True, **routing)


def one(kind: str, repo: str, out: Path) -> None:
    """One official model in this process (both repos have a top-level `models`)."""
    model = build(repo, kind).eval()
    states = {"model": randomise(model, 1), "ema": randomise(model, 2)}
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 37, 60, 99])
    y = torch.tensor([0, 3, 9, 10])  # 10: the null label of classifier-free guidance
    outputs = {"x": x, "t": t, "y": y}
    for which, state in states.items():
        model.load_state_dict(state)
        with torch.no_grad():
            outputs[which] = model(x, t, y)
    if kind == "dit":
        # train.py's args: the image size in pixels, 8× the latent input_size
        extra = {"args": argparse.Namespace(model="DiT-tiny", image_size=64, num_classes=10)}
    elif kind == "dtr":
        routing = {"sharing_ratio": 0.5, "taskcount": 100, "init_method": "DTR"}
        extra = {"config": {"models": {"routing": routing}}}
    else:
        routing = {"name": "DMoE", "taskcount": 100, "w_JSD": 1.0, "param": {"num_experts": 3, "k": 2}}
        extra = {"config": {"routing": routing}}
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
        dit, dtr, switch, out = sys.argv[1:5]
        Path(out).mkdir(parents=True, exist_ok=True)
        for kind, repo in (("dit", dit), ("dtr", dtr), ("switch", switch)):
            subprocess.run([sys.executable, __file__, "--one", kind, repo, out], check=True)
