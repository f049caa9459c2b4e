"""How well the automatic diameter finds the red-cell size of real fields, and what it costs.

Truth per field: the median red-cell diameter of the reference — TXL-PBC boxes (class 1 = red
cell; the equivalent diameter of the ellipse inscribed in a box is sqrt(w * h)) or BBBC041 masks
(connected components). With ``--pbc``, PBC val images enlarged to a CellaVision field's native
360 px (the data set's copies are 128 px); their truth is the median diameter of the whole cells
found in the 128 px image, which is at the model's own scale, times 360 / 128. ``--scales``
enlarges every field further (bicubic) to ask whether the estimate follows the scale. Prints, per
source (image size), the median absolute relative error of the estimate, the share of fields
within 25 % of the truth, and the seconds per estimate.

Usage::

    python benchmarks/diameter_estimate.py --txl ../shared/data/txl_pbc --bbbc ../shared/data/bbbc041 \
        --pbc ../shared/data/pbc [--every 4] [--pbc-every 35] [--scales 1 2] [--model smear]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def txl_truth(folder: Path, every: int) -> list[tuple[Path, float]]:
    from PIL import Image

    out = []
    for f in sorted((folder / "images" / "val").glob("*.jpg"))[::every]:
        lab = folder / "labels" / "val" / f"{f.stem}.txt"
        if not lab.is_file():
            continue
        w, h = Image.open(f).size
        d = [
            np.sqrt(float(r[3]) * w * float(r[4]) * h)
            for r in (line.split() for line in lab.read_text().splitlines())
            if len(r) == 5 and r[0] == "1"
        ]
        if len(d) >= 3:
            out.append((f, float(np.median(d))))
    return out


def bbbc_truth(folder: Path) -> list[tuple[Path, float]]:
    from skimage import io, measure

    out = []
    for f in sorted((folder / "val" / "images").glob("*.jpg")):
        m = io.imread(folder / "val" / "masks" / f"{f.stem}.png")
        m = m[..., 0] if m.ndim == 3 else m
        areas = np.bincount(measure.label(m > 0).ravel())[1:]
        areas = areas[areas >= 30]
        out.append((f, float(np.median(2 * np.sqrt(areas / np.pi)))))
    return out


def pbc_fields(folder: Path, every: int, seg, params) -> list[tuple[np.ndarray, float]]:
    """PBC val images at 360 px; truth from the whole cells of the 128 px image (model scale)."""
    import csv

    from PIL import Image

    from napari_cytodiffusion.segmentation.cellpose_seg import _eval, _median_diameter, _prepare

    out = []
    with open(folder / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][::every]
    for r in rows:
        img = Image.open(folder / r["path"]).convert("RGB")
        x, kw = _prepare(seg, np.asarray(img, np.float32) / 255.0)
        d = _median_diameter(_eval(seg, x, kw, params, None, resample=False), interior=True)
        if d is not None:
            out.append((np.asarray(img.resize((360, 360), Image.BICUBIC)), d * 360 / img.width))
    return out


def enlarge(img: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    if factor == 1:
        return img
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((round(w * factor), round(h * factor)), Image.BICUBIC))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--txl", type=Path, default=None)
    ap.add_argument("--bbbc", type=Path, default=None)
    ap.add_argument("--pbc", type=Path, default=None, help="PBC folder (labels.csv): val images at 360 px")
    ap.add_argument("--every", type=int, default=4, help="every N-th TXL-PBC val field")
    ap.add_argument("--pbc-every", type=int, default=35, help="every N-th PBC val image")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0], help="enlarge every field by these")
    ap.add_argument("--model", default="smear")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from skimage import io

    from napari_cytodiffusion.io.images import RGBNormaliser
    from napari_cytodiffusion.segmentation.cellpose_seg import (
        SegmentParams,
        estimate_diameter,
        load_segmenter,
    )

    seg = load_segmenter(args.model)
    params = SegmentParams(model=args.model)
    fields: list[tuple[str, object, float]] = []  # (source, file or image, truth)
    if args.txl:
        fields += [("txl", f, t) for f, t in txl_truth(args.txl, args.every)]
    if args.bbbc:
        fields += [("bbbc041", f, t) for f, t in bbbc_truth(args.bbbc)]
    if args.pbc:
        fields += [("pbc", img, t) for img, t in pbc_fields(args.pbc, args.pbc_every, seg, params)]
    if not fields:
        ap.error("give --txl, --bbbc and/or --pbc")
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, f, truth in fields:
        field = io.imread(f) if isinstance(f, Path) else f
        for factor in args.scales:
            img = enlarge(field, factor)
            t0 = time.perf_counter()
            d = estimate_diameter(seg, RGBNormaliser(img), params)
            secs = time.perf_counter() - t0
            est = d if d is not None else seg.diam_mean
            src = f"{name} {img.shape[1]}x{img.shape[0]}" + (f" (x{factor:g})" if factor != 1 else "")
            rows[src].append((abs(est / (truth * factor) - 1), secs))
    report = {"model": seg.name, "model_scale_px": seg.diam_mean, "sources": {}}
    for src, r in sorted(rows.items()):
        err = np.array([e for e, _ in r])
        secs = np.array([s for _, s in r])
        report["sources"][src] = {
            "fields": len(r),
            "median_abs_rel_error": round(float(np.median(err)), 3),
            "within_25pct": round(float(np.mean(err <= 0.25)), 3),
            "seconds_per_estimate": round(float(secs.mean()), 2),
        }
        print(src, report["sources"][src], flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
