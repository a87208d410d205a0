"""The evaluation's own noise: one checkpoint scored with several sample seeds at several sample counts.

    python analysis/eval_noise.py runs/repro/runs/vanilla-uniform/seed0 --samples 400 1000 2000 --seeds 5
    python analysis/eval_noise.py runs/repro/runs/vanilla-uniform/seed0 runs/repro/runs/dtr-uniform/seed0 \
        --samples 1000 --seeds 5     # and the noise of the paired difference b − a

Each (N, sample seed) draws N fresh EMA samples (balanced labels, the run's sampler and guidance) and
scores them by digits-FID and class accuracy against the same real set, as SampleQuality does during
training (sample seed 0 is SampleQuality's own x_T). The sd over sample seeds at fixed weights is the
part of a run's score that is evaluation noise, not training; the study's N is chosen so that it is
small beside the seed-to-seed spread of the score. Writes OUT/eval_noise.csv (every score) and
OUT/eval_noise.md (mean and sd per N). Given two runs (the two arms of one seed of a paired study), both
are scored with the same sample seeds, as the study scores both arms with the same x_T, and the table
adds the sd of the per-sample-seed difference b − a: the evaluation noise inside a paired difference,
which the shared x_T can make smaller than either arm's own. Costs ≈ 0.056 s a sample on one core
(DiT-T/2, 25 DDIM steps × 2 for guidance): 5 seeds × 1000 samples of two runs take ≈ 9 minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from dtr_lab.runs.markdown import text_table

PROG = Path(__file__).name
SECTIONS = ("seed_everything", "trainer", "model", "data", "checkpoint")
SEED = 4321  # SampleQuality's default seed
SEED_STRIDE = 10_007  # sample seed k uses SEED + k·stride; batch b of it seeds SEED + k·stride + b


def evaluation_noise(run_dir: Path, checkpoint: str, samples: list[int], seeds: int) -> pd.DataFrame:
    """Scores of the checkpoint: one row per (samples, sample_seed, metric) with the sampling seconds."""
    print(f"{PROG}: scoring {run_dir}", flush=True)
    from dtr_lab.data.base import real_images
    from dtr_lab.errors import DTRLabError
    from dtr_lab.metrics import SampleQualityMetrics
    from dtr_lab.model_checks import check_checkpoint
    from dtr_lab.pairing import instantiate
    from dtr_lab.samples import balanced_labels, generate
    from dtr_lab.storage.checkpoint_file import read_checkpoint

    config, ckpt = run_dir / "config.yaml", run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if not config.is_file():
        raise DTRLabError(f"{config}: no such file; give a run directory written by `dtr_lab fit`")
    saved = read_checkpoint(ckpt, weights_only=False, option="--checkpoint")
    # the sections that build the module and data (the rest are options of the `fit` subcommand)
    fit_config = {k: v for k, v in yaml.safe_load(config.read_text()).items() if k in SECTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(fit_config))
        model, datamodule = instantiate(["--config", str(Path(tmp) / "config.yaml")])
    try:  # what it was trained as, and its tensors: the check every loader goes through
        check_checkpoint(model, saved)
    except DTRLabError as err:
        raise DTRLabError(f"{ckpt}: {err}") from None
    model.load_state_dict(saved["state_dict"])
    model.eval()
    datamodule.setup("fit")
    scorer = SampleQualityMetrics(real_images(datamodule, 10_000, SEED), "digits", seed=SEED)
    rows = []
    for n in samples:
        labels = balanced_labels(n, model.hparams.num_classes)
        for k in range(seeds):
            started = time.perf_counter()
            images = generate(model, labels, n, SEED + k * SEED_STRIDE, batch_size=min(n, 500))
            seconds = time.perf_counter() - started
            scores = scorer(images, labels)
            rows += [
                {"samples": n, "sample_seed": k, "metric": m, "value": scores[m], "seconds": seconds}
                for m in ("fid", "accuracy", "precision", "recall")
            ]
            print(
                f"N={n} seed {k}: FID {scores['fid']:.2f}, accuracy {scores['accuracy']:.3f} "
                f"({seconds:.0f} s sampling)",
                flush=True,
            )
    return pd.DataFrame(rows)


def paired(scores: pd.DataFrame) -> pd.DataFrame:
    """The per-sample-seed difference b − a of two runs' scores, as rows of a third "run", "b − a"."""
    a, b = (scores[scores["run"] == r].set_index(["samples", "sample_seed", "metric"]) for r in ("a", "b"))
    diff = (b["value"] - a["value"]).rename("value").reset_index()
    return diff.assign(run="b − a", seconds=float("nan"))


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd (n − 1) over sample seeds, per run, sample count and metric, and seconds per sample."""
    grouped = scores.groupby(["run", "samples", "metric"])["value"]
    table = pd.concat({"mean": grouped.mean(), "sd": grouped.std(ddof=1), "seeds": grouped.size()}, axis=1)
    seconds = scores.groupby(["run", "samples"])["seconds"].mean().reset_index()
    seconds["s_per_sample"] = seconds["seconds"] / seconds["samples"]
    return table.reset_index().merge(seconds[["run", "samples", "s_per_sample"]], on=["run", "samples"])


def markdown(table: pd.DataFrame) -> str:
    head = [
        "run", "samples N", "sample seeds", "digits-FID mean", "FID sd", "accuracy mean", "accuracy sd",
        "s / sample",
    ]
    lines = []
    for (run, n), rows in table.groupby(["run", "samples"], sort=False):
        fid, acc = (rows[rows["metric"] == m].iloc[0] for m in ("fid", "accuracy"))
        per_sample = "–" if pd.isna(fid.s_per_sample) else f"{fid.s_per_sample:.4f}"
        lines.append(
            [str(run), str(n), str(fid.seeds), f"{fid['mean']:.2f}", f"{fid.sd:.2f}", f"{acc['mean']:.3f}",
             f"{acc.sd:.3f}", per_sample]
        )
    return text_table(head, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run directory (config.yaml, checkpoints/)")
    parser.add_argument(
        "run_b", type=Path, nargs="?", default=None, help="a second run (the other arm of a pair): adds b − a"
    )
    parser.add_argument("--checkpoint", default="last", help="checkpoint name in RUN/checkpoints (no .ckpt)")
    parser.add_argument("--samples", type=int, nargs="+", default=[400, 1000, 2000], help="sample counts N")
    parser.add_argument("--seeds", type=int, default=5, help="sample seeds per N")
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSV and table (default RUN)")
    args = parser.parse_args(argv)
    from dtr_lab.errors import DTRLabError

    if args.seeds < 2 or min(args.samples) < 100:
        print(
            f"{PROG}: error: --seeds must be ≥ 2 and every --samples ≥ 100 (KID's subset size)",
            file=sys.stderr,
        )
        return 2
    try:
        runs = {"a": args.run} if args.run_b is None else {"a": args.run, "b": args.run_b}
        scores = pd.concat(
            [
                evaluation_noise(run_dir, args.checkpoint, args.samples, args.seeds).assign(run=name)
                for name, run_dir in runs.items()
            ]
        )
    except DTRLabError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    if args.run_b is not None:
        scores = pd.concat([scores, paired(scores)], ignore_index=True)
    scores.to_csv(out / "eval_noise.csv", index=False)
    table = summary(scores)
    (out / "eval_noise.md").write_text(markdown(table))
    print(markdown(table))
    print(f"wrote {out / 'eval_noise.csv'} and {out / 'eval_noise.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
