"""Does the size check hurt on cells like the training cells? PBC val images through the smear path.

Each PBC val image (one labelled cell at the centre, red cells around it) goes through the whole
smear pipeline (segment, pick stained cells, classify with the size check). The centre cell's call
with the size check (``class``) and without it (``class_by_appearance``: the same crop, the same
errors, no prior) are both compared with the label, so the difference is the size check alone.

The scale of crops and sizes comes from each image's own red cells (``own``, the default of
``analyze``) and, from the same segmentations, from the red cells of all the images pooled
(``pooled``, ``analyze --pool-scale``). ``--enlarge 2.8125`` enlarges each image (bicubic) to the
360 px of the CellaVision field it was cut from, as a user's own export would be. Usage::

    python benchmarks/size_check_pbc.py --pbc ../shared/data/pbc [--per-class 100] [--scale own,pooled]
        [--enlarge 2.8125] [--out runs/size_check_pbc.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np


def centre_row(table, shape):
    """The table row of the cell under the image centre (or the nearest centroid), or None."""
    h, w = shape
    d2 = (table["centroid_y"] - h / 2) ** 2 + (table["centroid_x"] - w / 2) ** 2
    if not len(table):
        return None
    k = int(np.argmin(d2.to_numpy()))
    return table.iloc[k] if d2.iloc[k] <= (min(h, w) / 4) ** 2 else None


def balanced(pairs: list[tuple[str, str]]) -> float:
    per = defaultdict(list)
    for true, called in pairs:
        per[true].append(true == called)
    return float(np.mean([np.mean(v) for v in per.values()]))


def _scores(rows: list[dict], skipped: Counter) -> dict:
    w = [(x["true"], x["with"]) for x in rows]
    wo = [(x["true"], x["without"]) for x in rows]
    changed = [x for x in rows if x["with"] != x["without"]]
    return {
        "n": len(rows),
        "skipped": dict(skipped),
        "size_check_applied": sum(x["size_check"] == "applied" for x in rows),
        "balanced_accuracy_without": balanced(wo),
        "balanced_accuracy_with": balanced(w),
        "accuracy_without": float(np.mean([t == c for t, c in wo])),
        "accuracy_with": float(np.mean([t == c for t, c in w])),
        "red_cell_px_quartiles": [
            float(q) for q in np.percentile([x["red_cell_px"] for x in rows], [25, 50, 75])
        ],
        "changed": len(changed),
        "fixed": sum(x["with"] == x["true"] for x in changed),
        "broken": sum(x["without"] == x["true"] for x in changed),
        "changes": dict(
            Counter(f"{x['true']}: {x['without']} -> {x['with']}" for x in changed).most_common()
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", default="own,pooled", help="own, pooled or both (comma-separated)")
    ap.add_argument("--enlarge", type=float, default=1.0, help="enlarge each image by this (bicubic)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from napari_cytodiffusion.io.images import read_image, to_rgb_float
    from napari_cytodiffusion.model.registry import get_model
    from napari_cytodiffusion.pipeline import analyze, pooled_reference, stained_score, whole_red_cells
    from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams, segment
    from napari_cytodiffusion.segmentation.table import cells_table

    model = get_model("default")
    by_class: dict[str, list[str]] = defaultdict(list)
    with open(a.pbc / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == a.split:
                by_class[row["class"]].append(row["path"])
    rng = np.random.default_rng(a.seed)
    todo = [
        (c, p)
        for c in sorted(by_class)
        for p in np.array(sorted(by_class[c]))[rng.permutation(len(by_class[c]))[: a.per_class]]
    ]
    images, labels, diameters = [], [], {}
    for k, (_cls, rel) in enumerate(todo, 1):
        image = read_image(a.pbc / rel)
        if a.enlarge != 1:
            from PIL import Image

            h, w = image.shape[:2]
            size = (round(w * a.enlarge), round(h * a.enlarge))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        lab = segment(image, SegmentParams())
        rgb = to_rgb_float(image)
        table = cells_table(lab, rgb)
        red = whole_red_cells(table, stained_score(rgb, lab, table["label"].to_numpy()))
        diameters[rel] = table["equivalent_diameter"].to_numpy()[red]
        images.append(image)
        labels.append(lab.astype(np.uint16))
        print(f"\rsegmented {k}/{len(todo)}", end="", file=sys.stderr, flush=True)
    pooled = pooled_reference(diameters)
    print(f"\npooled scale: {pooled}", file=sys.stderr)
    out: dict = {"pooled_scale": pooled}
    cells: dict = {}
    for scale in a.scale.split(","):
        given = {"own": None, "pooled": pooled["pixels"]}[scale]
        rows, skipped = [], Counter()
        for k, ((cls, rel), image, lab) in enumerate(zip(todo, images, labels, strict=True), 1):
            own = given is None or rel in pooled["off_scale"]  # as analyze --pool-scale does
            px = None if own else given
            res = analyze(image, model=model, labels=lab, speed=a.speed, seed=a.seed, red_cell_px=px)
            r = centre_row(res.table, image.shape[:2])
            if r is None or not bool(r["classified"]):
                skipped[cls] += 1
            else:
                rows.append(
                    {
                        "path": rel,
                        "true": cls,
                        "with": r["class"],
                        "without": r["class_by_appearance"],
                        "size": float(r["size"]),
                        "size_check": res.summary["size_check"],
                        "red_cell_px": res.summary["reference_diameter"]["pixels"],
                    }
                )
            print(f"\r{scale}: {k}/{len(todo)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        out[scale] = _scores(rows, skipped)
        cells[scale] = rows
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps({"summary": out, "cells": cells}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
