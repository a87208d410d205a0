"""analysis/make_figures.py and analysis/compare.py end to end on real tiny runs and bad input."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tmpfs, write_fake_run

REPO = Path(__file__).resolve().parents[1]
FIGURES = [
    "training_curves",
    "loss_by_t_probe",
    "loss_by_t_train",
    "conflict_heatmaps",
    "affinity_heatmaps",
    "cos_vs_distance",
    "conflict_share",
    "conflict_share_blocks",
    "routing_vs_affinity",
    "samples",
]


def script(name: str, *args) -> subprocess.CompletedProcess:
    """The script as a user runs it, in its own interpreter (a tiny study trains and scores several runs:
    minutes on 2 busy cores)."""
    return subprocess.run(
        [sys.executable, str(REPO / "analysis" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=1200,
    )


def last_probe(run: Path) -> dict[int, float]:
    with (run / "records" / "loss_by_t.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "probe_ema"]
    last = max(int(r["step"]) for r in rows)
    return {int(r["i"]): float(r["value"]) for r in rows if int(r["step"]) == last}


def test_make_figures_writes_every_figure_and_index(tiny_runs, tmp_path):
    out = tmp_path / "figs"
    done = script("make_figures.py", tiny_runs["vanilla"], tiny_runs["dtr"], "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(FIGURES)} figures" in done.stdout
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    index = (out / "index.md").read_text()
    assert [m for m in re.findall(r"^## (\S+)", index, flags=re.M)] == FIGURES
    # the numbers behind the probe figure: per t, both losses and the dtr/vanilla ratio
    van, dtr = last_probe(tiny_runs["vanilla"]), last_probe(tiny_runs["dtr"])
    section = index.split("## loss_by_t_probe")[1].split("## ")[0]
    assert "| t | dtr | vanilla | dtr / vanilla |" in section
    for t in van:
        assert f"| {t} | {dtr[t]:.4g} | {van[t]:.4g} | {dtr[t] / van[t]:.4g} |" in section


def test_make_figures_bad_paths_and_truncated_run(tiny_runs, tmp_path, run_main):
    """Bad paths are one error line each; a cut-off run without affinity still gives the rest."""
    empty = tmp_path / "empty" / "version_0"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text("model: {}\n")
    run = tmp_path / "cut" / "version_0"
    shutil.copytree(tiny_runs["dtr"], run)
    (run / "records" / "affinity.csv").unlink()
    data = (run / "records" / "conflict.csv").read_bytes()
    (run / "records" / "conflict.csv").write_bytes(data[: len(data) // 2])
    out = tmp_path / "figs"
    done = run_main("make_figures.py", tmp_path / "nowhere", empty, run, "--out", out)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 2
    assert "nowhere: no such" in errors[0] and "version_0: run has no logged metrics" in errors[1]
    assert "skipped affinity_heatmaps: no run has metric 'tag' in records/affinity.csv" in done.stderr
    assert re.search(r"conflict.csv: line \d+ is cut off", done.stderr)
    index = (out / "index.md").read_text()
    assert "affinity_heatmaps" in index.split("## Not drawn")[1]
    assert (out / "conflict_heatmaps.png").exists() and not (out / "affinity_heatmaps.png").exists()


def test_make_figures_only_bad_input_exits_2(tmp_path, run_main):
    (tmp_path / "plain").mkdir()
    done = run_main("make_figures.py", tmp_path / "plain", "--out", tmp_path / "figs")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "plain: not a run directory" in done.stderr


def test_compare_pair(tiny_runs, tmp_path, run_main):
    out = tmp_path / "cmp"
    done = run_main("compare.py", tiny_runs["vanilla"], tiny_runs["dtr"], "--out", out)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:1] == ["metric"] and "vs" in header and header[-1] == "vanilla"
    van, dtr = last_probe(tiny_runs["vanilla"]), last_probe(tiny_runs["dtr"])
    mean_van, mean_dtr = sum(van.values()) / len(van), sum(dtr.values()) / len(dtr)
    line = next(ln for ln in done.stdout.splitlines() if ln.strip().startswith("probe loss, EMA"))
    assert f"{mean_van:.4g}" in line and f"{mean_dtr:.4g}" in line
    assert f"{(mean_dtr - mean_van) / mean_van * 100:+.1f} %" in line
    assert "ρ(mask IoU, affinity)" in done.stdout and "undefined for routing=vanilla" in done.stderr
    assert (out / "compare.md").exists() and (out / "loss_by_t_probe.png").exists()


def test_compare_without_common_metric(tmp_path, run_main):
    def lone_run(name: str, routing: str, record: str, row: str) -> Path:
        run = tmp_path / name / "version_0"
        (run / "records").mkdir(parents=True)
        (run / "config.yaml").write_text(f"model:\n  routing:\n    class_path: dtr_lab.routing.{routing}\n")
        (run / "records" / f"{record}.csv").write_text(f"step,metric,i,j,value\n{row}\n")
        return run

    a = lone_run("a", "NoRouting", "conflict", "0,neg_share,,,0.5")
    b = lone_run("b", "DTRRouting", "affinity", "0,tag,0,1,0.1")
    done = run_main("compare.py", a, b)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no metric in common" in done.stderr and "vanilla has conflicting pairs (share)" in done.stderr


@pytest.mark.parametrize("name", ["make_figures.py", "compare.py"])
def test_unknown_group_label(tiny_runs, tmp_path, name, run_main):
    done = run_main(name, tiny_runs["dtr"], "--by", "colour", "--out", tmp_path)
    assert done.returncode == 2 and "--by 'colour' is not a run label" in done.stderr


def test_out_that_is_a_file_is_one_line(tiny_runs, tmp_path, run_main):
    taken = tmp_path / "figures.png"
    taken.write_bytes(b"an existing figure")
    for name, out in (("make_figures.py", taken), ("compare.py", taken / "sub")):
        done = run_main(name, tiny_runs["vanilla"], tiny_runs["dtr"], "--out", out)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and f"{taken} is a file, not a folder" in done.stderr
    assert taken.read_bytes() == b"an existing figure"


@pytest.mark.parametrize("name", ["make_figures.py", "compare.py"])
def test_out_on_a_read_only_or_full_device_is_one_line(tmp_path, run_main, name):
    """Real tmpfs mounts: one error line naming the file and --out, exit 2, no half-written file left."""
    runs = [write_fake_run(tmp_path / "runs", routing) for routing in ("vanilla", "dtr")]
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        done = run_main(name, *runs, "--out", ro / "figs")
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert errors == [
            f"{name}: error: cannot write {ro / 'figs'}: read-only file system; write the figures to a "
            "writable folder (--out)"
        ]
    with tmpfs(tmp_path / "full", "32k") as full:  # a figure's PNG and PDF take more than 32 kB
        done = run_main(name, *runs, "--out", full)
        (error,) = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert (
            "no space left on device; free space on that device or write the figures elsewhere (--out)"
            in error
        )
        failed = Path(re.search(r"cannot write (\S+):", error).group(1))
        assert failed.parent == full and not failed.exists()  # the half-written figure is gone


def test_compare_skips_an_empty_newest_version(tiny_runs, tmp_path, run_main):
    """A failed start's empty version_1 next to a finished version_0 does not fail the comparison."""
    for name in ("vanilla", "dtr"):
        shutil.copytree(tiny_runs[name], tmp_path / name / "version_0")
        (tmp_path / name / "version_1").mkdir()
    done = run_main("compare.py", str(tmp_path / "*" / "version_*"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("holds no run output") == 2 and "probe loss, EMA" in done.stdout


# FID at end of fit and at test on a few samples: N differs between them, as in the quickstart (400, 1000)
TINY_QUALITY = {
    "class_path": "dtr_lab.callbacks.SampleQuality",
    "init_args": {
        "every_n_steps": 0, "num_samples": 20, "test_num_samples": 30, "batch_size": 30,
        "kid_subset_size": 10, "kid_subsets": 2,
    },
}
_RUN_ALL = """
from dtr_lab.cli import main
for args in {commands!r}:
    main(args)
"""


def quality(run: Path) -> dict[str, float]:
    """A run's records/quality.csv as {metric: its last value}."""
    with (run / "records" / "quality.csv").open() as f:
        return {r["metric"]: float(r["value"]) for r in csv.DictReader(f)}


def test_compare_counts_each_fit_once_after_its_test_and_resumption(tmp_path, run_main):
    """`make quickstart` then the docs' `test` command, in small, plus a resumed fit and a shorter stray
    fit: compare.py averages n = 1 fit per arm, names each FID's N, and says what it left out."""
    from helpers import scalars, tiny

    (tmp_path / "quality.yaml").write_text(f"trainer:\n  callbacks: [{TINY_QUALITY!r}]\n".replace("'", '"'))
    base = ["--config", str(REPO / "experiments/digits/base.yaml")]

    def command(kind, name, steps, *extra):
        configs = [*base, "--config", str(REPO / f"experiments/routing/{name}.yaml")]
        configs += ["--config", str(tmp_path / "quality.yaml")]
        sized = tiny(tmp_path, steps=steps, batch=16)
        return [kind, *configs, *sized, "--trainer.logger.init_args.name", name, *extra]

    dtr = tmp_path / "dtr"
    last = "checkpoints/last.ckpt"
    commands = [
        command("fit", "vanilla", 4),
        command("fit", "dtr", 2),  # version_0: stopped at step 2 …
        command("fit", "dtr", 4, "--ckpt_path", str(dtr / "version_0" / last)),  # … resumed to 4 (version_1)
        command("test", "dtr", 4, "--ckpt_path", str(dtr / "version_1" / last)),  # version_2
        command("fit", "dtr", 2),  # version_3: a shorter fit, not comparable
    ]
    done = subprocess.run([sys.executable, "-c", _RUN_ALL.format(commands=commands)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # every fit and test ends with its folder, final values (FID with its N) and the TensorBoard line
    assert done.stdout.count("Run folder:") == 5 and "v_num" not in done.stdout + done.stderr
    assert f"Run folder:  {dtr / 'version_2'}\nFinal:       test FID, N = 30: " in done.stdout
    line = f"-m tensorboard.main --logdir {tmp_path} --samples_per_plugin images=1000\n"
    assert done.stdout.count(line) == 5
    assert "FID, N = 20" in done.stdout and "test/num_samples" in done.stdout

    cmp = run_main("compare.py", tmp_path)
    assert cmp.returncode == 0, cmp.stderr
    header = cmp.stdout.splitlines()[0]
    assert "dtr (n=1)" in header and "vanilla (n=1)" in header
    rows = {re.split(r"\s{2,}", line.strip())[0]: line for line in cmp.stdout.splitlines()[1:]}
    # the joined dtr fit ends where its continuation ends: the continuation's last logged loss and FID
    loss = scalars(dtr / "version_1", "train/loss")[-1]
    assert loss[0] == 3 and f"{loss[1]:.4g}" in rows["train/loss (last)"]
    assert f"{quality(dtr / 'version_1')['fid']:.4g}" in rows["FID, N = 20"]
    test_fid = quality(dtr / "version_2")["test/fid"]
    assert f"{test_fid:.4g}" in rows["test FID, N = 30"] and "–" in rows["test FID, N = 30"]
    notes = cmp.stderr.splitlines()
    assert any("dtr/version_1 resumes dtr/version_0 from step 2: read as one run" in n for n in notes)
    assert any("dtr/version_2 is a test of dtr/version_0's checkpoint, not another run" in n for n in notes)
    left_out = [n for n in notes if "not averaged" in n]
    assert len(left_out) == 1 and "dtr/version_3 (fit, 2 steps)" in left_out[0]


# --- the paired studies (reproduce.py, scaling.py) on tiny settings ---

T_975_1DOF = 12.7062  # Student t, 0.975 quantile, 1 degree of freedom (2 seeds)
CORE = ("vanilla-uniform", "rtr-uniform", "dtr-uniform")


@pytest.fixture(scope="module")
def tiny_repro(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    done = script(
        "reproduce.py", "--out", out, "--max-steps", 4, "--seeds", 2, "--num-samples", 100, "--arms", *CORE
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


@pytest.mark.slow  # trains several tiny runs end to end: minutes on 2 cores
def test_reproduce_reports_paired_differences(tiny_repro):
    import pandas as pd

    out, done = tiny_repro
    scores = pd.read_csv(out / "scores.csv")
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["comparison"]) == {"R-TR − vanilla", "DTR − vanilla", "DTR − R-TR"}
    # sample quality and probe at every max_steps/6 steps (at 4 steps: every step), the probe also at 0
    assert set(paired[paired.metric == "fid"]["step"]) == {1, 2, 3, 4}
    assert set(paired["step"]) == {0, 1, 2, 3, 4}
    assert (paired["pairs"] == 2).all()
    assert set(paired["metric"]) == {"fid", "accuracy", "memorised", *(f"probe_{k}" for k in range(5))}

    def value(arm, seed, metric):
        at = scores[(scores.step == 4) & (scores.metric == metric)]
        row = at[(at.arm == arm) & (at.seed == seed)]
        return float(row["value"].iloc[0])

    for metric, rel in (("fid", False), ("probe_0", True)):
        d = [value("dtr-uniform", s, metric) - value("vanilla-uniform", s, metric) for s in (0, 1)]
        if rel:
            d = [100 * x / value("vanilla-uniform", s, metric) for s, x in zip((0, 1), d, strict=True)]
        at = paired[(paired.step == 4) & (paired.metric == metric)]
        row = at[at.comparison == "DTR − vanilla"].iloc[0]
        # two pairs: sd = |d0 − d1|/√2, half-width = t · sd/√2 = t·|d0 − d1|/2
        assert row["diff"] == pytest.approx((d[0] + d[1]) / 2)
        assert row["ci_high"] - row["diff"] == pytest.approx(T_975_1DOF * abs(d[0] - d[1]) / 2, rel=1e-4)
    table = (out / "table.md").read_text()
    assert "| DTR − vanilla | 4 | 2 |" in table and "Δ probe t∈[0,200)" in table  # a row per scoring point
    # a target no arm reaches in 4 steps: said in the convergence table, not a crash or a NaN
    assert "| DTR − vanilla | 2 | fid ≤ 50 | not reached by step 4 → not reached by step 4 |" in table
    assert "nan" not in table.lower()
    assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow  # trains several tiny runs end to end: minutes on 2 cores
def test_reproduce_skips_finished_runs(tiny_repro):
    out, _ = tiny_repro
    again = script(
        "reproduce.py",
        "--out",
        out,
        "--max-steps",
        4,
        "--seeds",
        2,
        "--num-samples",
        100,
        "--arms",
        *CORE,
        "--dry-run",
    )
    assert again.returncode == 0 and "6 runs (6 already done)" in again.stdout


def test_a_finished_run_stays_done_when_its_config_moves_or_gains_a_comment(tmp_path, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    from study import RunSpec, is_done

    config = tmp_path / "now" / "a.yaml"
    config.parent.mkdir()
    config.write_text("trainer:\n  max_steps: 4\n")
    run, out = RunSpec("arm", 0, [config]), tmp_path / "out"
    run.directory(out).mkdir(parents=True)
    then = tmp_path / "then" / "a.yaml"  # where it was when the run finished, commented differently
    then.parent.mkdir()
    then.write_text("# moved since\ntrainer:\n  max_steps: 4  # the same value\n")
    command = [str(then) if arg == str(config) else arg for arg in run.command(out)]
    done = {"command": command, "configs": {str(then): then.read_text()}}
    (run.directory(out) / "done.json").write_text(json.dumps(done))
    assert is_done(run, out)
    config.write_text("trainer:\n  max_steps: 5\n")  # a changed value trains it again
    assert not is_done(run, out)


def test_reproduce_refuses_routing_that_adds_parameters(tmp_path, run_main, monkeypatch):
    """A paired study whose routed arm has parameters the unrouted one lacks: one line, nothing trained."""
    import reproduce

    routed = tmp_path / "dtr_sigma.yaml"
    routed.write_text(
        (REPO / "experiments/routing/dtr.yaml").read_text()
        + "  net:\n    init_args:\n      learn_sigma: true\n"
    )
    arm = reproduce.Arm("dtr", "uniform", (str(routed), reproduce.UNIFORM))
    monkeypatch.setitem(reproduce.ARMS, "dtr-uniform", arm)
    study = tmp_path / "study"
    done = run_main("reproduce.py", "--out", study, "--max-steps", 4, "--seeds", 2, "--arms", *CORE)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("reproduce.py: error: paired study: dtr-uniform")
    assert "compare these arms unpaired" in done.stderr and not (study / "runs").exists()


@pytest.mark.slow  # trains several tiny runs end to end: minutes on 2 cores
def test_scaling_gain_by_width_and_steps(tmp_path):
    import pandas as pd

    out = tmp_path / "scaling"
    done = script("scaling.py", "--out", out, "--max-steps", 2, "--seeds", 2, "--num-samples", 100)
    assert done.returncode == 0, done.stdout + done.stderr
    paired = pd.read_csv(out / "paired.csv")
    fid = paired[paired["metric"] == "fid"]  # the probe also has the shared step-0 row
    steps = fid.groupby("size")["step"].unique().apply(sorted).to_dict()
    assert steps == {"DiT-T/2": [2, 4, 6, 8], "DiT-XS/2": [2]}  # DiT-T trains 4 S, scored every S
    assert (paired["pairs"] == 2).all() and set(paired["width"]) == {128, 256}
    assert "| DTR − vanilla | DiT-XS/2 | 2 | 2 |" in (out / "table.md").read_text()
    assert (out / "scaling.png").stat().st_size > 0


def test_long_run_passes_through_the_short_run(tmp_path):
    """Nothing in training depends on max_steps (constant LR, EMA warm-up by update count), so the
    4-step checkpoint of an 8-step run equals a 4-step run's: scaling.py scores one long run at S, 2S, ..."""
    import torch
    from helpers import DIGITS, run_cli, tiny

    states = {}
    for steps in (4, 8):
        save = tmp_path / f"s{steps}"
        keep_all = ["--checkpoint.save_top_k", "-1"]  # every 2 steps, all kept
        done = run_cli("fit", *DIGITS, *tiny(save, steps=steps), *keep_all, "--trainer.callbacks", "[]")
        assert done.returncode == 0, done.stderr
        ckpt = next((save / "digits").glob("version_*/checkpoints/epoch=*-step=4.ckpt"))
        states[steps] = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert states[4].keys() == states[8].keys() and any(k.startswith("ema.") for k in states[4])
    for key, value in states[4].items():
        assert torch.equal(value, states[8][key]), key


def test_eval_noise_of_a_paired_difference(monkeypatch):
    """Two arms scored with the same sample seeds: the difference's sd is taken per seed, so noise the
    arms share (the same x_T) cancels: here a's and b's FIDs move together and b − a is constant."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    import eval_noise

    rows = []
    for run, shift in (("a", 0.0), ("b", 3.0)):
        for seed, common in enumerate((40.0, 50.0, 45.0)):
            rows += [
                {
                    "run": run,
                    "samples": 1000,
                    "sample_seed": seed,
                    "metric": "fid",
                    "value": common + shift,
                    "seconds": 50.0,
                },
                {
                    "run": run,
                    "samples": 1000,
                    "sample_seed": seed,
                    "metric": "accuracy",
                    "value": 0.9 + 0.01 * seed * (run == "b"),
                    "seconds": 50.0,
                },
            ]
    scores = pd.DataFrame(rows)
    table = eval_noise.summary(pd.concat([scores, eval_noise.paired(scores)], ignore_index=True))
    fid = table[table["metric"] == "fid"].set_index("run")
    assert fid.loc["a", "sd"] == pytest.approx(5.0) and fid.loc["b", "sd"] == pytest.approx(5.0)
    assert fid.loc["b − a", "mean"] == pytest.approx(3.0) and fid.loc["b − a", "sd"] == pytest.approx(0.0)
    acc = table[table["metric"] == "accuracy"].set_index("run")
    assert acc.loc["b − a", "mean"] == pytest.approx(0.01) and acc.loc["b − a", "sd"] == pytest.approx(0.01)
    assert fid.loc["a", "s_per_sample"] == pytest.approx(0.05)
    text = eval_noise.markdown(table)
    assert "| b − a | 1000 | 3 | 3.00 | 0.00 |" in text and "| a | 1000 | 3 | 45.00 | 5.00 |" in text


def test_eval_noise_on_a_truncated_checkpoint_is_one_line(tiny_runs, tmp_path, run_main):
    """The analysis scripts load checkpoints through the CLI's checked loader, not a bare torch.load."""
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["vanilla"], run)
    last = run / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    done = run_main("eval_noise.py", run, "--samples", 100, "--seeds", 2)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith(f"eval_noise.py: error: --checkpoint {last} is truncated"), line
    assert not (run / "eval_noise.csv").exists()


@pytest.mark.parametrize("name", ["reproduce.py", "scaling.py"])
def test_study_with_too_few_samples_is_one_line(tmp_path, run_main, name):
    study = tmp_path / "study"
    done = run_main(name, "--out", study, "--num-samples", 50, "--seeds", 2)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"{name}: error: --num-samples 50 is below 100")
    assert not study.exists()


def fake_fid_scores(curves: dict[str, list[list[float]]]):
    """A study's scores table (arm, seed, step, metric, value) of FID curves scored every 200 steps."""
    import pandas as pd

    rows = [
        {"arm": arm, "seed": seed, "step": 200 * (i + 1), "metric": "fid", "value": value}
        for arm, seeds in curves.items()
        for seed, curve in enumerate(seeds)
        for i, value in enumerate(curve)
    ]
    return pd.DataFrame(rows)


def test_convergence_table_on_hand_made_curves(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    import study

    scores = fake_fid_scores(
        {
            "vanilla": [[120, 80, 40, 30, 25, 26], [120, 90, 50, 40, 30, 28], [130, 100, 60, 45, 40, 38]],
            "dtr": [[100, 60, 35, 28, 24, 24], [110, 70, 45, 30, 27, 27], [110, 70, 50, 40, 34, 33]],
        }
    )
    dtr = study.Comparison("DTR − vanilla", "vanilla", "dtr")
    row = study.convergence_table(scores, [dtr], target=35).iloc[0]
    # FID ≤ 35: vanilla at 700, 800 + 200·5/10 = 900 and never (seed 2); DTR at 600, 600 + 200·10/15 and
    # 800 + 200·5/6. Seed 2 is censored at 1200: differences −100, −166.7, −233.3 -> mean −166.7
    assert row["a_steps"] == "800 (2/3 seeds)" and row["b_steps"] == "767 (3/3 seeds)"
    assert row["steps_diff"] == pytest.approx(-500 / 3) and row["steps_censored"] == 1
    assert row["steps_entry"].startswith("-167 [")
    assert row["steps_entry"].endswith("(1 of 3 censored at step 1200)")
    # plateaus (last 3): vanilla 27, 32.67, 41; DTR 25.33, 28, 35.67 -> differences −1.67, −4.67, −5.33
    assert row["a_plateau"] == pytest.approx((27 + 98 / 3 + 41) / 3)
    assert row["plateau_diff"] == pytest.approx((-5 / 3 - 14 / 3 - 16 / 3) / 3)
    # sd of the differences √(7.630/2) = 1.953, half-width t_{0.975, 2} · 1.953/√3 = 4.852: 0 inside
    assert row["plateau_ci_high"] == pytest.approx(-35 / 9 + 4.852, abs=0.01)
    # a target no arm reaches: a clear entry in every steps cell, not a crash or a NaN in the table
    none = study.convergence_table(scores, [dtr], target=10)
    text = study.convergence_markdown(none)
    assert "| not reached by step 1200 → not reached by step 1200 | not reached by step 1200 |" in text
    assert "nan" not in text.lower()
    assert "| DTR − vanilla | 3 | fid ≤ 35 | 800 (2/3 seeds) → 767 (3/3 seeds) | -167 [" in (
        study.convergence_markdown(study.convergence_table(scores, [dtr], target=35))
    )


def test_verdict_table_on_hand_made_plateaus(monkeypatch):
    """Four seeds whose plateaus (mean of the last 3 points) are worked by hand: the differences in % of a,
    the verdict by the rules, the halves, the half-width against the target and the pairs it needs."""
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    import study

    flat = lambda level: [200, 100, 50, level, level, level]  # noqa: E731 (a curve on a plateau)
    scores = fake_fid_scores({
        "vanilla": [flat(20), flat(22), flat(18), flat(20)],  # mean plateau 20
        "dtr": [flat(17), flat(19), flat(15), flat(18)],  # differences −3, −3, −3, −2 -> −15 %, …, −10 %
        "same": [flat(20.2), flat(21.8), flat(18.2), flat(19.8)],  # ±1 %: inside a 10 % margin
    })
    rules = study.Precision(margin=10.0, half_width=6.0, reference="vanilla", planned_pairs=4, most_pairs=8)
    dtr = study.Comparison("DTR − vanilla", "vanilla", "dtr")
    same = study.Comparison("same", "vanilla", "same")
    table = study.verdict_table(scores, [dtr, same], rules).set_index("comparison")
    row = table.loc["DTR − vanilla"]
    d = [-15.0, 100 * -3 / 20, -15.0, -10.0]  # % of a's mean plateau (20)
    mean, sd = sum(d) / 4, (sum((x - sum(d) / 4) ** 2 for x in d) / 3) ** 0.5
    assert row["diff_pct"] == pytest.approx(mean) and row["diff"] == pytest.approx(-2.75)
    assert row["ci_high_pct"] == pytest.approx(mean + 3.1824 * sd / 2, abs=1e-3)  # t(0.975, 3) = 3.1824
    assert row["verdict"] == "better" and row["half_width_ref_pct"] == pytest.approx(3.1824 * sd / 2, 1e-3)
    assert row["target_met"] and row["pairs_needed"] == 4  # sd 2.5: t(0.975, 2) · 2.5/√3 = 6.2 > 6 ≥ 3.98
    # the halves: seeds 0, 2 (−15, −15: sd 0 -> an interval of width 0 below 0) and 1, 3
    assert row["even_seeds"] == "better" and not row["contradiction"]
    assert table.loc["same", "verdict"] == "no difference beyond ±10 %"
    text = study.verdict_markdown(table.reset_index(), rules)
    assert "| DTR − vanilla | 4 | 20.00 → 17.25 | -2.75 [" in text and "| better |" in text
    assert study.precision_note(table.reset_index(), rules).startswith("Every half-width is ≤ 6")


def test_plateau_check_tells_a_falling_curve_from_a_flat_one(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    import study

    scores = fake_fid_scores({
        "falling": [[300, 200, 100, 60, 45, 30], [300, 210, 110, 70, 50, 36], [300, 190, 90, 55, 40, 28]],
        "flat": [[300, 100, 50, 25, 24, 26], [300, 100, 50, 22, 25, 23], [300, 100, 50, 27, 26, 27]],
    })
    falling, flat = study.plateau_check(scores, "falling"), study.plateau_check(scores, "flat")
    assert falling["change"] == pytest.approx(-91 / 3) and not falling["on_plateau"]  # −30, −34, −27
    assert flat["change"] == pytest.approx(2 / 3) and flat["on_plateau"]  # +1, +1, 0: the interval holds 0
    assert "| falling | 3 | 800 → 1200 |" in study.plateau_markdown([falling, flat])


def test_comparisons_of_different_networks_skip_the_weight_check(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    import study

    import dtr_lab.pairing

    def refuse(args):
        raise AssertionError("a seed-paired comparison's networks are not built")

    monkeypatch.setattr(dtr_lab.pairing, "instantiate", refuse)
    runs = [study.RunSpec(arm, 0, []) for arm in ("vanilla", "experts")]
    experts = study.Comparison("experts − vanilla", "vanilla", "experts", same_weights=False)
    study.check_pairs(runs, [experts], tmp_path)


def test_a_study_seeds_the_routing_whose_config_gives_it_a_seed(monkeypatch, tmp_path):
    """R-TR's YAML gives its routing a seed, so each study seed draws other tables; DTR's and Switch's
    give none, and their runs keep the routing's default; a later file's routing of another class starts
    afresh, one of the same class keeps the seed it was given."""
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    from study import RunSpec, routing_seeded

    routing = REPO / "experiments" / "routing"
    assert routing_seeded([routing / "rtr.yaml"])
    assert not routing_seeded([routing / "dtr.yaml"]) and not routing_seeded([routing / "switch.yaml"])
    assert not routing_seeded([routing / "rtr.yaml", routing / "dtr.yaml"])
    same = tmp_path / "beta.yaml"
    same.write_text("model:\n  routing:\n    class_path: dtr_lab.routing.RandomRouting\n    init_args:\n"
                    "      beta: 0.5\n")
    assert routing_seeded([routing / "rtr.yaml", same]) and not routing_seeded([same])
    args = RunSpec("rtr", 3, [routing / "rtr.yaml"]).args(tmp_path)
    assert args[args.index("--model.routing.init_args.seed") + 1] == "3"
    assert "--model.routing.init_args.seed" not in RunSpec("dtr", 3, [routing / "dtr.yaml"]).args(tmp_path)
