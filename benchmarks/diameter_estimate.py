"""How well the automatic diameter finds the red-cell size of real fields, and what it costs.

Truth per field: the median red-cell diameter of the reference — TXL-PBC boxes (class 1 = red
cell; the equivalent diameter of the ellipse inscribed in a box is sqrt(w * h)) or BBBC041 masks
(connected components). Prints, per source (image size), the median absolute relative error of the
estimate, the share of fields within 25 % of the truth, and the seconds per estimate.

Usage::

    python benchmarks/diameter_estimate.py --txl ../shared/data/txl_pbc --bbbc ../shared/data/bbbc041 \
        [--every 4] [--model smear]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--txl", type=Path, default=None)
    ap.add_argument("--bbbc", type=Path, default=None)
    ap.add_argument("--every", type=int, default=4, help="every N-th TXL-PBC val field")
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

    fields = []
    if args.txl:
        fields += txl_truth(args.txl, args.every)
    if args.bbbc:
        fields += bbbc_truth(args.bbbc)
    if not fields:
        ap.error("give --txl and/or --bbbc")
    seg = load_segmenter(args.model)
    params = SegmentParams(model=args.model)
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f, truth in fields:
        img = io.imread(f)
        t0 = time.perf_counter()
        d = estimate_diameter(seg, RGBNormaliser(img), params)
        secs = time.perf_counter() - t0
        est = d if d is not None else seg.diam_mean
        src = ("bbbc041 " if "bbbc" in str(f) else "txl ") + f"{img.shape[1]}x{img.shape[0]}"
        rows[src].append((abs(est / truth - 1), secs))
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
