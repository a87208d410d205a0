"""Official DiT and DTR checkpoints in and out (dtr_lab.official) against a fixture the official code made.

tests/data/official/ (see its make_fixture.py): a 4-block, 4-wide DiT on 8×8×1 inputs with learned σ and
10 classes, random weights, saved by the official DiT (facebookresearch/DiT ed81ce2 ``models.py``), DTR
(byeongjun-park/DTR 97df445 ``models/DiT/models.py`` + ``models/taskrouting.py``, β = 0.5, T = 100) and
Switch-DiT (byeongjun-park/Switch-DiT 12fa9a5 ``models/DiT/models.py`` + ``models/MoE.py``, E = 3, k = 2,
T = 100) code in their train.py format, with the official models' outputs on four inputs.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import sys
import zipfile

import helpers
import pytest
import torch
from helpers import DIGITS, REPO, run_cli, tmpfs

from dtr_lab.errors import DTRLabError
from dtr_lab.models.dit import DiT
from dtr_lab.official import build_module, export_state, import_state, main, official_args
from dtr_lab.routing import DTRRouting, RandomRouting, SwitchRouting, TableDataRouting
from dtr_lab.storage.official_file import read_official_file

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
DTR = DTRRouting(alpha=4.0, beta=0.5)
ROUTING = {"dit": None, "dtr": DTR, "switch": SwitchRouting(3, 2, seed=0), "rtr": TableDataRouting(beta=0.5),
           "dtr_uncond": DTR, "switch_dtr": DTR}  # fmt: skip
COSINE = ["--model.schedule", "cosine"]  # what rtr's and dtr_uncond's train.py configs state
# float32 outputs of size ≤ 4 from the same operations in another order (DTR's m ⊙ z + Block + (1 − m) ⊙ z
# against z + (Block − m ⊙ z); the experts' GEMMs; timm's and dtr_lab's attention and MLP kernels): up to
# 20 float32 ulps of 2.5 (2.3e-6, Switch-DiT's EMA) on this machine; 1e-5 leaves 4× for other CPUs'
# summation orders, and is 10⁴ below what a transposed embedding changes
ATOL = 1e-5


def tiny_net(kind: str, layout: str = "column_first", num_classes: int = 10) -> DiT:
    return DiT(8, 1, num_classes, 100, routing=ROUTING[kind], size="DiT-T/2", hidden_size=4, learn_sigma=True,
               pos_embed_layout=layout).eval()  # fmt: skip


@pytest.mark.parametrize(
    "kind, num_classes",
    # dtr_uncond (DTR's one label row, every label 0) into an unconditional model (the row folded into the
    # timestep embedding's bias) and into a 1-class one (the row is also its null row)
    [("dit", 10), ("dtr", 10), ("switch", 10), ("rtr", 10), ("switch_dtr", 10), ("dtr_uncond", 0),
     ("dtr_uncond", 1)],
)  # fmt: skip
@pytest.mark.parametrize("role", ["model", "ema"])
def test_the_official_outputs_are_reproduced(kind, num_classes, role):
    official = read_official_file(FIXTURE / f"{kind}_tiny.pt").states[role]
    expected = torch.load(FIXTURE / f"{kind}_outputs.pt")
    net = tiny_net(kind, num_classes=num_classes)
    state, layout = import_state(official, net, "fixture")
    assert layout == "column_first"
    net.load_state_dict(state)
    y = expected["y"] if num_classes else None
    with torch.no_grad():
        out = net(expected["x"], expected["t"], y)
    torch.testing.assert_close(out, expected[role], atol=ATOL, rtol=0)
    # the check has teeth: the same weights under the transposed (row-first) embedding differ by O(1)
    transposed = tiny_net(kind, "row_first", num_classes)
    transposed.load_state_dict(state)
    with torch.no_grad():
        assert (transposed(expected["x"], expected["t"], y) - expected[role]).abs().max() > 0.1


def test_r_tr_tables_come_from_the_file_and_no_seed_draws_them():
    """The official R-TR draws each block's table from NumPy's global RNG: TableDataRouting takes them."""
    official = read_official_file(FIXTURE / "rtr_tiny.pt").states["ema"]
    tables = [official[f"blocks.{i}.routing._unit_mapping"] for i in range(4)]
    assert all(torch.equal(t.sum(1), torch.full((100,), 2.0)) for t in tables)  # C_β = int(4 · 0.5) = 2
    assert not torch.equal(tables[0], tables[1])  # a table per block
    net = tiny_net("rtr")
    drawn = [net.router.block_table(i).clone() for i in range(4)]
    # the seed's draw is not the file's
    assert not any(torch.equal(t, d) for t, d in zip(tables, drawn, strict=True))
    state, _ = import_state(official, net, "fixture")
    net.load_state_dict(state)
    assert all(torch.equal(net.router.block_table(i), tables[i]) for i in range(4))
    # a fixed routing refuses them: no seed draws them again
    with pytest.raises(DTRLabError, match="block 0 has another mask table than the config's RandomRouting"):
        import_state(official, DiT(8, 1, 10, 100, routing=RandomRouting(beta=0.5), size="DiT-T/2",
                                   hidden_size=4, learn_sigma=True), "fixture")  # fmt: skip


def test_import_export_round_trip_is_exact(tmp_path):
    """official → dtr_lab → official gives the official file's tensors back bit for bit (the position
    embedding too); dtr_lab → official → dtr_lab gives the same state_dict; the CLI validates the import."""
    src = FIXTURE / "dtr_tiny.pt"
    imported, exported, again = tmp_path / "in.ckpt", tmp_path / "out.pt", tmp_path / "again.ckpt"
    main(["import", str(src), str(imported), *DTR_HALF])
    ckpt = torch.load(imported, weights_only=True)
    official = read_official_file(src).states
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
    official = read_official_file(FIXTURE / "dit_tiny.pt").states
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
    official = read_official_file(FIXTURE / "switch_tiny.pt").states
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
    official = read_official_file(FIXTURE / "dit_tiny.pt").states
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
    official = read_official_file(FIXTURE / "dit_tiny.pt").states
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


R_TR = [*TINY, "--model.routing", "dtr_lab.routing.TableDataRouting", "--model.routing.init_args.beta", "0.5"]


def test_the_noise_schedule_travels_with_a_train_py_file(tmp_path, capsys):
    """DTR's train.py config states the schedule (general.schedule_name): another one in the dtr_lab config
    is refused in one line; DiT's args state none, and the import says which one it assumed."""
    out = tmp_path / "out.ckpt"
    for kind, config in (("rtr", R_TR), ("dtr_uncond", DTR_HALF)):
        src = str(FIXTURE / f"{kind}_tiny.pt")
        fails_in_one_line(
            ["import", src, str(out), *config], capsys,
            f"official checkpoint {src} was trained with the cosine noise schedule",
            "the dtr_lab config's is linear", "--model.schedule cosine",
        )  # fmt: skip
    assert not out.exists()
    main(["import", str(FIXTURE / "dtr_tiny.pt"), str(out), *DTR_HALF])
    assert "noise schedule linear, as the file's config states" in capsys.readouterr().out
    main(["import", str(FIXTURE / "dit_tiny.pt"), str(out), *TINY, "--overwrite"])
    assert "noise schedule linear assumed (the config's): the file states none" in capsys.readouterr().out


def test_an_official_r_tr_file_imports_reproduces_and_exports(tmp_path, capsys):
    """rtr_tiny.pt as DTR's train.py writes it (init_method random, cosine): imported with TableDataRouting,
    the dtr_lab checkpoint alone (no seed, no official file) gives the official outputs; exported, the
    official tensors come back bit for bit."""
    src, out, back = FIXTURE / "rtr_tiny.pt", tmp_path / "rtr.ckpt", tmp_path / "rtr.pt"
    fails_in_one_line(
        ["import", str(src), str(out), *DTR_HALF, *COSINE], capsys,
        "is an R-TR checkpoint (init_method random)",
        "--model.routing dtr_lab.routing.TableDataRouting --model.routing.init_args.beta 0.5",
    )  # fmt: skip
    main(["import", str(src), str(out), *R_TR, *COSINE])
    module = build_module([*R_TR, *COSINE])  # tables drawn by seed 0, replaced by the checkpoint's
    module.load_state_dict(torch.load(out, weights_only=True)["state_dict"])
    expected = torch.load(FIXTURE / "rtr_outputs.pt")
    for net, role in ((module.net, "model"), (module.ema.module, "ema")):
        with torch.no_grad():
            got = net.eval()(expected["x"], expected["t"], expected["y"])
        torch.testing.assert_close(got, expected[role], atol=ATOL, rtol=0)
    main(["export", str(out), str(back), *R_TR, *COSINE])
    official, exported = read_official_file(src).states, torch.load(back, weights_only=True)
    for role in ("model", "ema"):
        assert set(exported[role]) == set(official[role])
        assert all(torch.equal(exported[role][k], v) for k, v in official[role].items())


def official_call(stdout: str) -> ast.Call:
    """The `DiT(...)` call an export prints."""
    return ast.parse(re.search(r"models\.py (DiT\(.*\)) loads it", stdout).group(1), mode="eval").body


# the official DTR models/DiT/models.py DiT's parameters (97df445); TaskRouter's create_mask_tasks raises
# ValueError for any init_method but "DTR" and "random"
DTR_DIT = {"input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
           "class_dropout_prob", "num_classes", "learn_sigma", "router", "sharing_ratio", "taskcount",
           "init_method"}  # fmt: skip


def test_the_printed_dtr_call_is_one_the_official_class_takes(tmp_path, capsys):
    imported, exported = tmp_path / "in.ckpt", tmp_path / "out.pt"
    main(["import", str(FIXTURE / "dtr_tiny.pt"), str(imported), *DTR_HALF])
    capsys.readouterr()
    main(["export", str(imported), str(exported), *DTR_HALF])
    call = official_call(capsys.readouterr().out)
    args = {k.arg: k.value for k in call.keywords}
    assert set(args) <= DTR_DIT
    assert ast.literal_eval(args["init_method"]) == "DTR" and ast.literal_eval(args["sharing_ratio"]) == 0.5
    assert ast.literal_eval(args["taskcount"]) == 100 and ast.literal_eval(args["hidden_size"]) == 4


def test_the_unconditional_layout_round_trips():
    """An unconditional dtr_lab DiT exports DTR's FFHQ layout (one label row, here zeros: c = emb(t) + 0)
    and imports back bit for bit; the official call names num_classes 1 without a null row."""
    net = tiny_net("dtr", num_classes=0)
    official = export_state(net)
    assert official["y_embedder.embedding_table.weight"].shape == (1, 4)
    assert official_args(net)["num_classes"] == 1 and official_args(net)["class_dropout_prob"] == 0.0
    state, _ = import_state(official, tiny_net("dtr", num_classes=0), "exported")
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_a_train_py_config_is_read_without_omegaconf_or_any_other_code(tmp_path, capsys):
    """The fixtures pickle a real OmegaConf DictConfig; reading them imports no OmegaConf, and a file whose
    pickle would run a command is refused, in one line, before anything runs."""
    with zipfile.ZipFile(FIXTURE / "dtr_tiny.pt") as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"omegaconf.dictconfig" in pickled and b"DictConfig" in pickled
    config = read_official_file(FIXTURE / "switch_dtr_tiny.pt").config
    assert config["routing"] == {"name": "DTR", "param": {"alpha": 4.0, "beta": 0.5, "taskcount": 100}}
    assert config["models"]["param"] == {"num_classes": 10, "latent_size": 8}  # ${data.num_classes} resolved
    assert "omegaconf" not in sys.modules
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    official = read_official_file(FIXTURE / "dtr_tiny.pt").states
    torch.save({**official, "config": {"general": Payload()}}, evil)
    line = fails_in_one_line(
        ["import", str(evil), str(tmp_path / "x.ckpt"), *DTR_HALF], capsys,
        "was refused by the restricted unpickler (it pickles posix.system",
        "OmegaConf config of plain values",
    )  # fmt: skip
    assert "\x1b" not in line and not marker.exists()


def test_wording_of_table_layout_and_unpickling_errors(tmp_path, capsys):
    dtr = read_official_file(FIXTURE / "dtr_tiny.pt").states
    for role in ("model", "ema"):
        del dtr[role]["blocks.2.routing._unit_mapping"]
    missing = tmp_path / "missing_table.pt"
    torch.save({"model": dtr["model"], "ema": dtr["ema"]}, missing)
    out = tmp_path / "out.ckpt"
    fails_in_one_line(
        ["import", str(missing), str(out), *DTR_HALF], capsys,
        "block 2 has no mask table, but the config's DTRRouting(alpha=4.0, beta=0.5) routes it",
    )  # fmt: skip
    unet = [*DIGITS, "--model.net.class_path", "dtr_lab.models.UNet", "--model.net.init_args.size", "UNet-T"]
    line = fails_in_one_line(
        ["import", str(FIXTURE / "dit_tiny.pt"), str(out), *unet], capsys,
        "a UNet has no official DiT layout", "import into a config whose model is a DiT",
    )  # fmt: skip
    assert "export" not in line
    # an official file given to export: torch's reason in a few words, no ANSI codes, no page of advice
    line = fails_in_one_line(
        ["export", str(FIXTURE / "dit_tiny.pt"), str(tmp_path / "o.pt"), *TINY], capsys,
        "it pickles argparse.Namespace, which torch.load(weights_only=True) does not build",
    )  # fmt: skip
    assert "\x1b" not in line and "add_safe_globals" not in line
    assert not out.exists()


def test_label_layouts_the_config_cannot_take_are_one_line():
    """A Switch-DiT gate reads emb(t) without the label row, so an unconditional file folds into a
    1-class model only; a class-conditional file never folds into an unconditional one."""
    uncond = read_official_file(FIXTURE / "dtr_uncond_tiny.pt").states["ema"]
    with pytest.raises(DTRLabError, match="unconditional Switch-DiT .* use data of one class"):
        import_state(uncond, tiny_net("switch", num_classes=0), "fixture")
    conditional = read_official_file(FIXTURE / "dtr_tiny.pt").states["ema"]
    with pytest.raises(DTRLabError, match=r"class-conditional checkpoint \(11 label rows\) but the config's"):
        import_state(conditional, tiny_net("dtr", num_classes=0), "fixture")
