"""`python -m dtr_lab.encode IMAGE_FOLDER OUT_DIR --vae NAME`: images -> sharded, scaled VAE latents.

Latents are z = (E[q(z|x)] − shift) · scaling_factor (or a posterior sample with --sample), the
scaling that makes SD-VAE latents roughly unit-variance (0.18215, Rombach et al. 2022); DiT trains
on these. The output folder is what `dtr_lab.data.LatentDataModule` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dtr_lab.data.image_folder import ImageFiles, check_folder, index_folder
from dtr_lab.data.latents import META_FILE, load_vae, shard_name
from dtr_lab.errors import DTRLabError


class Tolerant(Dataset):
    """Images that fail to decode come back as their path, so a worker never dies on one bad file."""

    def __init__(self, images: ImageFiles) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | str:
        try:
            return self.images[i]
        except DTRLabError:
            return str(self.images.files[i])


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, labels) of the decodable items and the paths of the others."""
    good = [item for item in items if not isinstance(item, str)]
    bad = [item for item in items if isinstance(item, str)]
    x = torch.stack([item[0] for item in good]) if good else torch.empty(0)
    y = torch.tensor([item[1] for item in good], dtype=torch.long)
    return x, y, bad


class ShardWriter:
    """Buffers latents (and flipped twins) and writes them in shards of a fixed size."""

    def __init__(self, out_dir: Path, shard_size: int, dtype: np.dtype) -> None:
        self.out_dir, self.shard_size, self.dtype = out_dir, shard_size, dtype
        self.pending: dict[str, list[np.ndarray]] = {}
        self.count = 0  # samples buffered
        self.shards = 0  # shards written
        self.total = 0  # samples written

    def add(self, **arrays: np.ndarray) -> None:
        for kind, array in arrays.items():
            self.pending.setdefault(kind, []).append(array)
        self.count += len(next(iter(arrays.values())))
        while self.count >= self.shard_size:
            self.write(self.shard_size)

    def write(self, size: int) -> None:
        for kind, parts in self.pending.items():
            joined = np.concatenate(parts)
            out = joined[:size] if kind == "labels" else joined[:size].astype(self.dtype)
            np.save(self.out_dir / shard_name(kind, self.shards), out)
            self.pending[kind] = [joined[size:]]
        self.count -= size
        self.shards += 1
        self.total += size
        print(f"wrote shard {self.shards - 1} ({self.total} samples so far)", file=sys.stderr)

    def close(self) -> None:
        if self.count:
            self.write(self.count)


def encode_folder(
    image_folder: str,
    out_dir: str,
    vae: str,
    image_size: int = 256,
    shard_size: int = 1000,
    flip: bool = False,
    sample: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
    on_bad_file: str = "skip",
    dtype: str = "float16",
    seed: int = 0,
) -> dict:
    """Encodes every readable image under image_folder into out_dir; returns the meta.json it wrote."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DTRLabError(
            f"OUT_DIR={out} exists and is not empty; choose a new folder (latents are never overwritten)"
        )
    if shard_size < 1 or batch_size < 1 or image_size < 1:
        raise DTRLabError("--shard-size, --batch-size and --image-size must be positive integers")
    classes = check_folder(image_folder, "IMAGE_FOLDER")
    index = index_folder(image_folder, classes, on_bad_file, skip_fix="pass --on-bad-file skip")
    autoencoder = load_vae(vae, "--vae")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    autoencoder.to(device)
    scale = float(autoencoder.config.scaling_factor)
    shift = float(getattr(autoencoder.config, "shift_factor", None) or 0.0)
    gen = torch.Generator(device=device).manual_seed(seed)

    def latents(x: torch.Tensor) -> np.ndarray:
        posterior = autoencoder.encode(x).latent_dist
        z = posterior.sample(generator=gen) if sample else posterior.mean
        return ((z - shift) * scale).float().cpu().numpy()  # (B, C, h, w)

    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, shard_size, np.dtype(dtype))
    skipped = [str(p) for p in index.skipped]
    loader = DataLoader(
        Tolerant(ImageFiles(index.files, index.labels, image_size)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
    )
    latent_shape = None
    with torch.no_grad():
        for x, y, bad in loader:
            if bad and on_bad_file == "stop":
                raise DTRLabError(
                    f"{bad[0]}: cannot decode this image; remove it, or pass --on-bad-file skip"
                )
            skipped += bad
            if not len(x):
                continue
            x = x.to(device)
            arrays = {"latents": latents(x), "labels": y.numpy()}
            if flip:
                arrays["latents_flip"] = latents(x.flip(-1))
            latent_shape = list(arrays["latents"].shape[1:])
            writer.add(**arrays)
    writer.close()
    if latent_shape is None:
        raise DTRLabError(f"IMAGE_FOLDER={image_folder}: no image could be decoded; check the files")
    meta = {
        "vae": vae,
        "scaling_factor": scale,
        "shift_factor": shift,
        "posterior": "sample" if sample else "mean",
        "image_size": image_size,
        "latent_shape": latent_shape,
        "num_classes": len(classes),
        "classes": classes,
        "num_samples": writer.total,
        "shard_size": shard_size,
        "flip": flip,
        "dtype": dtype,
        "skipped": skipped,
    }
    # written last: a folder without meta.json is an interrupted encode, and LatentDataModule refuses it
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (listed in {out / META_FILE})", file=sys.stderr)
    return meta


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dtr_lab.encode", description=__doc__.splitlines()[0])
    parser.add_argument(
        "image_folder", metavar="IMAGE_FOLDER", help="one subfolder of images per class (or flat)"
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder for the shards and meta.json")
    parser.add_argument(
        "--vae", required=True, help="AutoencoderKL: Hub id (e.g. stabilityai/sd-vae-ft-ema) or local folder"
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="side after shorter-side resize and centre crop"
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per .npy shard")
    parser.add_argument(
        "--flip", action="store_true", help="also write latents of the horizontally flipped images"
    )
    parser.add_argument(
        "--sample", action="store_true", help="draw z from the posterior instead of taking its mean"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per VAE call")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding images")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--on-bad-file", choices=["skip", "stop"], default="skip", help="unreadable images")
    parser.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="stored latent precision"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds posterior samples (with --sample)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        meta = encode_folder(
            args.image_folder,
            args.out_dir,
            args.vae,
            image_size=args.image_size,
            shard_size=args.shard_size,
            flip=args.flip,
            sample=args.sample,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            on_bad_file=args.on_bad_file,
            dtype=args.dtype,
            seed=args.seed,
        )
    except DTRLabError as err:
        print(f"dtr_lab.encode: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {meta['num_samples']} latents {meta['latent_shape']} to {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
