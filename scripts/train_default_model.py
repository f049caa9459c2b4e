"""Recipe of the shipped default model (``pbc32``): reproduce it with this script.

Data: ``../shared/data/pbc`` (Acevedo et al. 2020, CC BY 4.0), train split only. 8% of the
train split (stratified, seed 0) is held out as a *calibration* set that the diffusion
model never sees; the classifier's temperature, P(correct) model and anomaly threshold
are fitted on it. The ``val`` split is only used for the reported metrics.

Usage::

    python scripts/train_default_model.py prepare --pbc ../shared/data/pbc --cache pbc_cache.npz
    python scripts/train_default_model.py train --cache pbc_cache.npz --out runs/pbc32 [--resume]
        [--steps 30000] [--max-seconds 3600] [--device cuda] [--channels 16,32,64]

Training is resumable: an interrupted run continues from ``OUT/checkpoints/last.pt``.

On a lent GPU machine everything travels in one 64 MiB (67.1 MB) transfer with the checkout (35.4 MB of
tracked files in session 38), and files come back at most 16 MiB each, so plan the bytes:

- the data: ``slim --cache pbc_cache.npz --out runs/gpu/train.npz --jpeg-quality 95`` (train split
  only, each 36 px crop a JPEG without chroma subsampling: 14.4 MB, PSNR 39.3 dB against the crops;
  quality 90: 10.1 MB, 35.5 dB; lossless: ~35 MB, which no longer fits); ``train`` decodes it;
- diffusers is not in the device image: carry its wheel (``pip download --no-deps``, 6.4 MB for
  0.42.1; the device README says how) and put ``src`` on ``PYTHONPATH``;
- a run's ``checkpoints/last.pt`` (weights, EMA and optimizer, ~44 MB) neither travels nor comes
  back, so each ~10 min GPU round is a warm restart: ``--init-from default`` (the shipped model,
  tracked; 35.4 + 14.4 + 6.4 = 56 MB) in the first, the model folder the previous round wrote to
  ``$OUT`` (``unet/``, ``scheduler/``, ``cytodiffusion.json``: 11 MB; with the quality-90 data
  63 MB) after it, with ``--device cuda --max-seconds`` under the device time left.
  ``scripts/gpu_round.sh`` is one such round, checked on this CPU (``GPU_ROUND_DEVICE=cpu``, two
  chained rounds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_cytodiffusion.io.datasets import load_single_cell_crops, map_classes, read_labelled
from napari_cytodiffusion.model.architecture import DEFAULT_ARCH, parse_widths, with_widths
from napari_cytodiffusion.model.folder import default_preprocessing
from napari_cytodiffusion.model.train import TrainConfig, TrainingData, store_size, train

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
PBC_CREDIT = {
    "dataset": "PBC (Acevedo et al., Data in Brief 30 (2020) 105474, doi:10.17632/snkd93bnjr.1)",
    "licence": "CC BY 4.0",
    "split_used": "train minus an 8% stratified calibration hold-out (seed 0)",
}


def prepare(pbc: Path, cache: Path, size: int = 32, margin: float = 1.125) -> None:
    pre = default_preprocessing(size)
    frac = pre["single_cell"]["center_crop_fraction"]
    out = {}
    for split in ("train", "val"):
        ls = read_labelled(pbc / "labels.csv", split=split)
        labels = map_classes(ls.classes, CLASSES)
        if split == "train":
            rng = np.random.default_rng(0)
            cal = np.zeros(len(labels), bool)
            for c in range(len(CLASSES)):
                idx = np.flatnonzero(labels == c)
                cal[rng.choice(idx, size=int(round(0.08 * len(idx))), replace=False)] = True
            paths = np.array(ls.paths, dtype=object)
            out["train_images"] = load_single_cell_crops(
                list(paths[~cal]), store_size(size, margin), min(1.0, frac * margin), workers=2
            )
            out["train_labels"] = labels[~cal]
            out["cal_images"] = load_single_cell_crops(list(paths[cal]), size, frac, workers=2)
            out["cal_labels"] = labels[cal]
        else:
            out["val_images"] = load_single_cell_crops(ls.paths, size, frac, workers=2)
            out["val_labels"] = labels
    np.savez_compressed(cache, classes=np.array(CLASSES), **out)
    print({k: v.shape for k, v in out.items()})


def encode_jpeg(images: np.ndarray, quality: int) -> dict[str, np.ndarray]:
    """uint8 (N, H, W, 3) crops as JPEG bytes (no chroma subsampling): one buffer and N + 1 offsets."""
    import io

    from PIL import Image

    chunks = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality, subsampling=0)
        chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    return {
        "train_jpeg": np.concatenate(chunks),
        "train_jpeg_offsets": offsets,
        "train_shape": np.array(images.shape),
    }


def load_train_split(cache: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Classes, train crops and labels of a cache, decoding a ``slim --jpeg-quality`` copy."""
    import io

    from PIL import Image

    z = np.load(cache, allow_pickle=False)
    classes = [str(c) for c in z["classes"]]
    if "train_images" in z.files:
        return classes, z["train_images"], z["train_labels"]
    buf, off = z["train_jpeg"], z["train_jpeg_offsets"]
    images = np.empty(tuple(int(v) for v in z["train_shape"]), np.uint8)
    for i in range(len(images)):
        images[i] = np.asarray(Image.open(io.BytesIO(buf[off[i] : off[i + 1]].tobytes())).convert("RGB"))
    return classes, images, z["train_labels"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--pbc", type=Path, default=Path("../shared/data/pbc"))
    p.add_argument("--cache", type=Path, required=True)
    sl = sub.add_parser(
        "slim", help="copy of the cache with the train split only (to carry to a GPU machine)"
    )
    sl.add_argument("--cache", type=Path, required=True)
    sl.add_argument("--out", type=Path, required=True)
    sl.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        help="store each crop as a JPEG of this quality (4:4:4) to carry less; default: lossless",
    )
    t = sub.add_parser("train")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--steps", type=int, default=30000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--min-lr", type=float, default=None, help="cosine decay to this after the warm-up")
    t.add_argument("--warmup-steps", type=int, default=500)
    t.add_argument("--ema-decay", type=float, default=0.9995)
    t.add_argument(
        "--init-from",
        default=None,
        help="continue this model's training from its weights ('default' or a folder); an annealing phase "
        "of the default made it worse (docs/measurements.md)",
    )
    t.add_argument("--max-seconds", type=float, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--exclude-class", default=None, help="train a variant without this class (anomaly test)")
    t.add_argument(
        "--channels",
        default=None,
        help="UNet widths per level, e.g. 16,32,64 (default 32,64,128; see benchmarks/architecture_cost.py: "
        "16,32,64 costs ~0.4x per evaluation)",
    )
    t.add_argument(
        "--augment",
        default=None,
        help="augmentation strengths other than the recipe's, as JSON, e.g. '{\"stain_jitter\": 0.2, "
        '"saturation": 0.3}\' (keys of napari_cytodiffusion.model.augment.AugmentConfig)',
    )
    args = ap.parse_args(argv)
    augment = {}
    if getattr(args, "augment", None):
        import json
        from dataclasses import asdict

        from napari_cytodiffusion.model.augment import AugmentConfig

        try:
            augment = json.loads(args.augment)
        except ValueError as exc:
            ap.error(f"--augment: not JSON ({exc})")
        if not isinstance(augment, dict):
            ap.error("--augment: give a JSON object of strengths")
        unknown = set(augment) - set(asdict(AugmentConfig()))
        if unknown:
            ap.error(f"--augment: unknown keys {sorted(unknown)}; known: {sorted(asdict(AugmentConfig()))}")
        augment = asdict(AugmentConfig()) | augment
    if args.cmd == "prepare":
        prepare(args.pbc, args.cache)
        return 0
    if args.cmd == "slim":
        if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
            ap.error("--jpeg-quality must be 1-100")
        z = np.load(args.cache, allow_pickle=False)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        keep = {k: z[k] for k in ("classes", "train_labels")}
        if args.jpeg_quality is not None:
            keep.update(encode_jpeg(z["train_images"], args.jpeg_quality))
        else:
            keep["train_images"] = z["train_images"]
        tmp = args.out.with_name(args.out.name + ".tmp.npz")  # whole or nothing
        np.savez_compressed(tmp, **keep)
        tmp.replace(args.out)
        print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB")
        return 0
    classes, images, labels = load_train_split(args.cache)
    name = "pbc32"
    if args.exclude_class:
        k = classes.index(args.exclude_class)
        keep = labels != k
        images, labels = images[keep], labels[keep]
        labels = np.where(labels > k, labels - 1, labels)
        classes = [c for c in classes if c != args.exclude_class]
        name = f"pbc32-without-{args.exclude_class}"
    data = TrainingData(
        images=images,
        labels=labels,
        classes=classes,
        description={"source": "../shared/data/pbc/labels.csv", "n_images": len(labels), **PBC_CREDIT},
    )
    arch = None
    if args.channels:
        widths = parse_widths(args.channels)
        arch = with_widths(DEFAULT_ARCH, widths)
        name += "-" + "x".join(str(w) for w in widths)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        init_from=args.init_from,
        max_seconds=args.max_seconds,
        device=args.device,
        checkpoint_every=1000,
        **({"arch": arch} if arch else {}),
        **({"augment": augment} if augment else {}),
    )
    last = None
    for ev in train(data, args.out, cfg, resume=args.resume, metadata={"name": name, "training": PBC_CREDIT}):
        if ev.get("done") or ev["step"] % 200 == 0:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()}, flush=True)
        last = ev
    return 0 if last else 1


if __name__ == "__main__":
    sys.exit(main())
