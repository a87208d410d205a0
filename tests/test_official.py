"""Official DiT and DTR checkpoints in and out (dtr_lab.official) against a fixture the official code made.

tests/data/official/ (see its make_fixture.py): a 4-block, 4-wide DiT on 8×8×1 inputs with learned σ and
10 classes, random weights, saved by the official DiT (facebookresearch/DiT ed81ce2 ``models.py``), DTR
(byeongjun-park/DTR 97df445 ``models/DiT/models.py`` + ``models/taskrouting.py``, β = 0.5, T = 100) and
Switch-DiT (byeongjun-park/Switch-DiT 12fa9a5 ``models/DiT/models.py`` + ``models/MoE.py``, E = 3, k = 2,
T = 100) code in their train.py format, with the official models' outputs on four inputs.
"""

from __future__ import annotations

import hashlib
import shutil

import helpers
import pytest
import torch
from helpers import DIGITS, REPO, run_cli, tmpfs

from dtr_lab.models.dit import DiT
from dtr_lab.official import import_state, main, read_official
from dtr_lab.routing import DTRRouting, SwitchRouting

FIXTURE = REPO / "tests/data/official"
TINY = [
    *DIGITS,
    "--model.net.init_args.hidden_size", "4",
    "--model.net.init_args.learn_sigma", "true",
    "--model.num_timesteps", "100",
    "--model.sample_steps", "50",
]  # fmt: skip
DTR_HALF = [
    *TINY,
    "--config",
    str(REPO / "experiments/routing/dtr.yaml"),
    "--model.routing.init_args.beta",
    "0.5",
]
ROUTING = {"dit": None, "dtr": DTRRouting(alpha=4.0, beta=0.5), "switch": SwitchRouting(3, 2, seed=0)}
# float32 outputs of size ≤ 4 from the same operations in another order (DTR's m ⊙ z + Block + (1 − m) ⊙ z
# against z + (Block − m ⊙ z); the experts' GEMMs; timm's and dtr_lab's attention and MLP kernels): up to
# 20 float32 ulps of 2.5 (2.3e-6, Switch-DiT's EMA) on this machine; 1e-5 leaves 4× for other CPUs'
# summation orders, and is 10⁴ below what a transposed embedding changes
ATOL = 1e-5


def tiny_net(kind: str, layout: str = "column_first") -> DiT:
    return DiT(8, 1, 10, 100, routing=ROUTING[kind], size="DiT-T/2", hidden_size=4, learn_sigma=True,
               pos_embed_layout=layout).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["dit", "dtr", "switch"])
@pytest.mark.parametrize("role", ["model", "ema"])
def test_the_official_outputs_are_reproduced(kind, role):
    official = read_official(FIXTURE / f"{kind}_tiny.pt")[0][role]
    expected = torch.load(FIXTURE / f"{kind}_outputs.pt")
    net = tiny_net(kind)
    state, layout = import_state(official, net, "fixture")
    assert layout == "column_first"
    net.load_state_dict(state)
    with torch.no_grad():
        out = net(expected["x"], expected["t"], expected["y"])
    torch.testing.assert_close(out, expected[role], atol=ATOL, rtol=0)
    # the check has teeth: the same weights under the transposed (row-first) embedding differ by O(1)
    transposed = tiny_net(kind, "row_first")
    transposed.load_state_dict(state)
    with torch.no_grad():
        assert (transposed(expected["x"], expected["t"], expected["y"]) - expected[role]).abs().max() > 0.1


def test_import_export_round_trip_is_exact(tmp_path):
    """official → dtr_lab → official gives the official file's tensors back bit for bit (the position
    embedding too); dtr_lab → official → dtr_lab gives the same state_dict; the CLI validates the import."""
    src = FIXTURE / "dtr_tiny.pt"
    imported, exported, again = tmp_path / "in.ckpt", tmp_path / "out.pt", tmp_path / "again.ckpt"
    main(["import", str(src), str(imported), *DTR_HALF])
    ckpt = torch.load(imported, weights_only=True)
    official = torch.load(src, weights_only=False)
    assert torch.equal(
        ckpt["state_dict"]["net.blocks.1.mlp.0.weight"], official["model"]["blocks.1.mlp.fc1.weight"]
    )
    assert torch.equal(
        ckpt["state_dict"]["ema.module.x_embedder.weight"], official["ema"]["x_embedder.proj.weight"]
    )
    assert ckpt["dtr_lab_identity"]["pos_embed"] == "column_first"
    main(["export", str(imported), str(exported), *DTR_HALF])
    out = torch.load(exported, weights_only=True)
    for role in ("model", "ema"):
        assert set(out[role]) == set(official[role])
        for name, tensor in official[role].items():
            assert torch.equal(out[role][name], tensor), (role, name)
    assert out["args"]["hidden_size"] == 4 and out["args"]["learn_sigma"] is True
    main(["import", str(exported), str(again), *DTR_HALF])
    second = torch.load(again, weights_only=True)["state_dict"]
    assert set(second) == set(ckpt["state_dict"])
    assert all(torch.equal(second[k], v) for k, v in ckpt["state_dict"].items())
    proc = run_cli("validate", *DTR_HALF, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                   "--trainer.limit_val_batches", "1", "--ckpt_path", str(imported))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "val/loss_ema" in proc.stdout
    # digits/base.yaml's analysis callbacks measured the imported official model (no training)
    records = tmp_path / "runs/digits/version_0/records"
    for name in ("loss_by_t", "conflict", "affinity", "routing"):
        assert (records / f"{name}.csv").exists(), name


def test_the_public_bare_ema_state_dict_loads_as_model_and_ema(tmp_path):
    """The public DiT-XL-2-256x256.pt is a bare state_dict of EMA weights (DiT download.py find_model)."""
    bare = tmp_path / "DiT-tiny.pt"
    official = torch.load(FIXTURE / "dit_tiny.pt", weights_only=False)
    torch.save(official["ema"], bare)
    out = tmp_path / "in.ckpt"
    main(["import", str(bare), str(out), *TINY])
    state = torch.load(out, weights_only=True)["state_dict"]
    name = "blocks.3.adaLN_modulation.1.weight"
    assert torch.equal(state[f"net.{name}"], official["ema"][name])
    assert torch.equal(state[f"ema.module.{name}"], official["ema"][name])


def fails_in_one_line(args: list[str], capsys, *needles: str) -> str:
    """`python -m dtr_lab.official ARGS` in this process: exit status 2 and one line naming each needle."""
    return helpers.fails_in_one_line(main, args, capsys, *needles)


def test_a_switch_dit_checkpoint_imports_and_does_not_export(tmp_path, capsys):
    switch = [*TINY, "--config", str(REPO / "experiments/routing/switch.yaml")]
    switch += ["--model.routing.init_args.seed", "0"]
    out = tmp_path / "switch.ckpt"
    main(["import", str(FIXTURE / "switch_tiny.pt"), str(out), *switch])
    state = torch.load(out, weights_only=True)["state_dict"]
    official = torch.load(FIXTURE / "switch_tiny.pt", weights_only=False)
    ema, model = official["ema"], official["model"]
    assert torch.equal(state["ema.module.router.experts.2.expert_weight"], ema["routers.2.experts.w"])
    assert torch.equal(state["net.router.experts.0.gate_weight"], model["routers.0.f_gate.1.weight"])
    fails_in_one_line(["export", str(out), str(tmp_path / "out.pt"), *switch], capsys, "learned experts")
    fails_in_one_line(
        ["import", str(FIXTURE / "switch_tiny.pt"), str(tmp_path / "x.ckpt"), *switch,
         "--model.routing.init_args.k", "1"], capsys, "diffusion prior is not the config's",
    )  # fmt: skip
    fails_in_one_line(
        ["import", str(FIXTURE / "switch_tiny.pt"), str(tmp_path / "x.ckpt"), *DTR_HALF], capsys,
        "routing is not SwitchRouting",
    )  # fmt: skip
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "out.pt").exists()


def rewritten(tmp_path, change) -> str:
    official = torch.load(FIXTURE / "dit_tiny.pt", weights_only=False)
    for role in ("model", "ema"):
        change(official[role])
    path = tmp_path / "changed.pt"
    torch.save({"model": official["model"], "ema": official["ema"]}, path)
    return str(path)


def scramble(state: dict) -> None:
    state["pos_embed"] = state["pos_embed"].flip(1)  # tokens in another order: no sin-cos layout


def test_bad_official_checkpoints_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out.ckpt"
    dit, dtr = str(FIXTURE / "dit_tiny.pt"), str(FIXTURE / "dtr_tiny.pt")
    # the size does not match the config (DiT-T/2 is 128 wide without the override)
    fails_in_one_line(
        ["import", dit, str(out), *DIGITS], capsys, f"official checkpoint {dit}", "pos_embed has shape"
    )
    fails_in_one_line(
        ["import", dit, str(out), *TINY, "--model.net.init_args.learn_sigma", "false"], capsys,
        "final_layer.linear.weight has shape (8, 4) but (4, 4)",
    )  # fmt: skip
    fails_in_one_line(["import", rewritten(tmp_path, scramble), str(out), *TINY], capsys, "an unknown layout")
    fails_in_one_line(
        ["import", dtr, str(out), *TINY], capsys, f"official checkpoint {dtr}", "model is unrouted"
    )
    fails_in_one_line(
        ["import", dtr, str(out), *DTR_HALF, "--model.routing.init_args.beta", "0.8"], capsys,
        "block 0 has another mask table than the config's DTRRouting(alpha=4.0, beta=0.8)",
    )  # fmt: skip
    fails_in_one_line(["import", str(tmp_path / "missing.pt"), str(out), *TINY], capsys, "no such file")
    assert not out.exists()


def test_exports_the_official_layout_cannot_express_are_one_line(tmp_path, capsys):
    dummy = tmp_path / "any.ckpt"
    dummy.write_bytes(b"")
    out = tmp_path / "out.pt"
    unet = [*DIGITS, "--model.net.class_path", "dtr_lab.models.UNet", "--model.net.init_args.size", "UNet-T"]
    fails_in_one_line(["export", str(dummy), str(out), *unet], capsys, "a UNet has no official DiT layout")
    switch = [*DIGITS, "--config", str(REPO / "experiments/routing/switch.yaml")]
    fails_in_one_line(
        ["export", str(dummy), str(out), *switch], capsys, "SwitchRouter (learned experts) cannot"
    )
    assert not out.exists()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dst_is_never_src_and_an_existing_dst_only_with_overwrite(tmp_path, capsys, tiny_runs):
    """DST = SRC (also by a symlink or another spelling of the path) is refused even with --overwrite; an
    existing DST, a run's last.ckpt included, needs --overwrite; every refused file keeps its bytes."""
    src = tmp_path / "dit.pt"
    shutil.copy(FIXTURE / "dit_tiny.pt", src)
    imported = tmp_path / "in.ckpt"
    main(["import", str(src), str(imported), *TINY])
    last = tiny_runs["vanilla"] / "checkpoints/last.ckpt"
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    before = {path: digest(path) for path in (src, imported, last)}
    same = "is SRC"
    for command, source, dst in [
        ("import", src, src),
        ("import", src, link),
        ("import", src, tmp_path / ".." / tmp_path.name / "dit.pt"),
        ("export", imported, imported),
        ("export", last, last),
    ]:
        fails_in_one_line([command, str(source), str(dst), *TINY, "--overwrite"], capsys, f"DST {dst}", same)
    for command, source, dst in [("import", src, imported), ("import", src, last), ("export", imported, src)]:
        fails_in_one_line([command, str(source), str(dst), *TINY], capsys, f"DST {dst} exists", "--overwrite")
    assert {path: digest(path) for path in before} == before
    main(["import", str(src), str(imported), *TINY, "--overwrite"])  # the same bytes again: torch.save is
    assert digest(imported) == before[imported]  # deterministic for the same tensors and identity


def test_unreadable_sources_are_one_line_naming_them(tmp_path, capsys):
    folder, junk, dst = tmp_path / "folder", tmp_path / "junk.pt", tmp_path / "out.ckpt"
    folder.mkdir()
    junk.write_text("not a checkpoint")
    fails_in_one_line(
        ["import", str(folder), str(dst), *TINY], capsys, f"official checkpoint {folder} is a folder"
    )
    fails_in_one_line(
        ["export", str(folder), str(dst), *TINY], capsys, f"dtr_lab checkpoint {folder} is a folder"
    )
    for command in ("import", "export"):
        fails_in_one_line(
            [command, str(junk), str(dst), *TINY], capsys, f"{junk} is not a PyTorch checkpoint"
        )
    official = torch.load(FIXTURE / "dit_tiny.pt", weights_only=False)
    for name, content, needle in [
        (
            "entry.pt",
            {"model": {**official["model"], "pos_embed": 3}},
            "'model' entry 'pos_embed' is of type int",
        ),
        ("list.pt", {"model": [1, 2], "ema": official["ema"]}, "'model' is of type list"),
        (
            "bare.pt",
            {"pos_embed": official["model"]["pos_embed"], "step": 7},
            "'model' entry 'step' is of type int",
        ),
    ]:
        torch.save(content, tmp_path / name)
        line = fails_in_one_line(["import", str(tmp_path / name), str(dst), *TINY], capsys, needle)
        assert f"official checkpoint {tmp_path / name}" in line and "not a tensor" in line
    imported = tmp_path / "in.ckpt"
    main(["import", str(FIXTURE / "dit_tiny.pt"), str(imported), *TINY])
    checkpoint = torch.load(imported, weights_only=True)
    checkpoint["state_dict"]["net.pos_embed"] = "sin-cos"
    torch.save(checkpoint, imported)
    fails_in_one_line(
        ["export", str(imported), str(dst), *TINY], capsys,
        f"dtr_lab checkpoint {imported}: its state_dict entry 'net.pos_embed' is of type str, not a tensor",
    )  # fmt: skip
    assert not dst.exists()


def test_unwritable_dsts_are_one_line_naming_them(tmp_path, capsys):
    """A folder, a path under a file, a read-only folder and a full disk (real tmpfs mounts): one line
    naming DST, not the hidden temporary file, with a fix this command has; nothing left behind."""
    src, file = str(FIXTURE / "dit_tiny.pt"), tmp_path / "file"
    file.write_text("keep")
    fails_in_one_line(["import", src, str(tmp_path), *TINY], capsys, f"DST {tmp_path} is a folder")
    fails_in_one_line(
        ["import", src, str(file / "sub/out.ckpt"), *TINY],
        capsys,
        f"DST {file / 'sub/out.ckpt'}: {file} is a file",
    )
    assert file.read_text() == "keep"
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        line = fails_in_one_line(
            ["import", src, str(ro / "out.ckpt"), *TINY], capsys,
            f"cannot write {ro / 'out.ckpt'}: read-only file system", "write DST to a writable folder",
        )  # fmt: skip
        assert ".tmp" not in line and "save_dir" not in line
    imported = tmp_path / "in.ckpt"
    main(["import", src, str(imported), *TINY])
    with tmpfs(tmp_path / "full", "20k") as full:  # the exported file is about 50 kB
        line = fails_in_one_line(
            ["export", str(imported), str(full / "out.pt"), *TINY], capsys,
            f"cannot write {full / 'out.pt'}: no space left on device", "write DST elsewhere",
        )  # fmt: skip
        assert ".tmp" not in line and "save_dir" not in line
        assert list(full.iterdir()) == []  # no partial file, no temporary file
