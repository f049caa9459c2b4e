"""The smear crop's field of view that matches the training crops, measured on PBC's own images.

The diffusion model was trained on single-cell images cut as its metadata says (centre square of
``center_crop_fraction`` of the shorter side). On a smear, a cell's crop spans
``field_rbc_diameters`` × the field's reference diameter (:func:`~napari_cytodiffusion.pipeline.
reference_diameter`: the median whole red cell). This script segments PBC images with the shipped
smear model (default settings) and prints, per image, the training crop's side in units of that
reference: its median is the ``field_rbc_diameters`` at which smear crops have the training crops'
physical scale. Usage::

    python benchmarks/crop_scale.py --pbc ../shared/data/pbc [--split train] [--per-class 25]
        [--write-model DIR...]

``--write-model`` stores the median (3 decimals) as ``preprocessing.smear.field_rbc_diameters`` of
the given model folders, with the measurement in ``extra["crop_scale"]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def field_in_reference_cells(image: np.ndarray, center_crop_fraction: float) -> tuple[float | None, str]:
    """The training crop's side over the image's reference diameter, and which cells gave it."""
    from napari_cytodiffusion.io.images import to_rgb_float
    from napari_cytodiffusion.pipeline import reference_diameter, stained_score
    from napari_cytodiffusion.segmentation.cellpose_seg import segment
    from napari_cytodiffusion.segmentation.table import cells_table

    labels = segment(image)
    table = cells_table(labels)
    score = stained_score(to_rgb_float(image), labels, table["label"].to_numpy())
    ref, how = reference_diameter(table, score)
    if not ref:
        return None, how
    return center_crop_fraction * min(image.shape[:2]) / ref, how


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--per-class", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="default", help="whose center_crop_fraction to use")
    ap.add_argument("--write-model", type=Path, nargs="*", default=None, help="model folders to update")
    a = ap.parse_args()
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.registry import get_model

    frac = float(get_model(a.model).metadata.preprocessing["single_cell"]["center_crop_fraction"])
    by_class: dict[str, list[str]] = defaultdict(list)
    with open(a.pbc / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == a.split:
                by_class[row["class"]].append(row["path"])
    rng = np.random.default_rng(a.seed)
    fields, how = [], defaultdict(int)
    per_class = {}
    for cls in sorted(by_class):
        paths = np.array(sorted(by_class[cls]))[rng.permutation(len(by_class[cls]))[: a.per_class]]
        mine = []
        for p in paths:
            v, h = field_in_reference_cells(read_image(a.pbc / p), frac)
            how[h] += 1
            if v is not None:
                mine.append(v)
        fields += mine
        per_class[cls] = float(np.median(mine)) if mine else None
        print(f"{cls}: {len(mine)} images, median {per_class[cls]:.3f}", file=sys.stderr, flush=True)
    v = np.asarray(fields)
    out = {
        "split": a.split,
        "n_images": len(v),
        "reference_cells": dict(how),
        "center_crop_fraction": frac,
        "median_field_rbc_diameters": round(float(np.median(v)), 3),
        "quartiles": [round(float(q), 3) for q in np.percentile(v, [25, 75])],
        "median_per_class": {c: None if m is None else round(m, 3) for c, m in per_class.items()},
    }
    print(json.dumps(out, indent=1))
    if a.write_model:
        from napari_cytodiffusion.model.folder import read_metadata, write_metadata

        for folder in a.write_model:
            meta = read_metadata(folder)
            meta.preprocessing["smear"]["field_rbc_diameters"] = out["median_field_rbc_diameters"]
            meta.extra["crop_scale"] = {
                **out,
                "source": "PBC images segmented with the shipped smear model (benchmarks/crop_scale.py)",
            }
            write_metadata(folder, meta)
            print(f"wrote field_rbc_diameters {out['median_field_rbc_diameters']} to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
