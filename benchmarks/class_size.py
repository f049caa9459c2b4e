"""How large each class's cells are, relative to the red cells around them, on PBC images.

PBC's crops (360 × 363 px, one microscope, one magnification) hold one cell of the labelled class at
the centre and the red cells around it. Each image is segmented with the shipped smear model (default
settings, platelet pass on); the cell under the image centre is the labelled cell, and its
equivalent diameter is divided by the image's reference diameter, the one the smear pipeline uses
(the median whole red cell; at least ``--min-others`` cells besides the centre one). Prints the
percentiles of that ratio per class: what size a cell of each class has on a smear, in red-cell
diameters. Usage::

    python benchmarks/class_size.py --pbc ../shared/data/pbc [--split val] [--per-class 60] [--out sizes.json]

``--write-model DIR...`` (with ``--from`` a train-split run's JSON, or measuring anew) stores each class's
1st–99th percentile range, widened by :data:`~napari_cytodiffusion.classify.size.MARGIN`, in the model
folders' metadata (``extra["class_sizes"]``), where the smear pipeline checks every call against it.
Platelets get no lower bound: PBC's platelet images show mostly large platelets and clumps (median
0.8 red-cell diameters), while a single platelet is a quarter to half a red cell across.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def centre_ratio(image: np.ndarray, labels: np.ndarray, min_others: int) -> float | None:
    """Diameter of the cell at the image centre in units of the field's reference diameter.

    The reference is the one the smear pipeline uses (:func:`~napari_cytodiffusion.pipeline.
    reference_diameter`: the median of the whole red cells), so that the measured ranges and the
    sizes the pipeline checks against them share one unit. The image needs ``min_others`` cells
    besides the centre one.
    """
    from napari_cytodiffusion.io.images import to_rgb_float
    from napari_cytodiffusion.pipeline import reference_diameter, stained_score
    from napari_cytodiffusion.segmentation.table import cells_table

    h, w = labels.shape
    t = cells_table(labels)
    if len(t) < min_others + 1:
        return None
    cy, cx = h / 2, w / 2
    label = int(labels[int(cy), int(cx)])
    if label == 0:  # nearest cell centroid within a quarter of the image
        d2 = (t["centroid_y"] - cy) ** 2 + (t["centroid_x"] - cx) ** 2
        k = int(np.argmin(d2.to_numpy()))
        if d2.iloc[k] > (min(h, w) / 4) ** 2:
            return None
        label = int(t["label"].iloc[k])
    reference, _ = reference_diameter(t, stained_score(to_rgb_float(image), labels, t["label"].to_numpy()))
    if not reference:
        return None
    d = float(t.loc[t["label"] == label, "equivalent_diameter"].iloc[0])
    return d / reference


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--classes", nargs="*", default=None)
    ap.add_argument("--min-others", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--from", dest="from_json", type=Path, default=None, help="reuse a run's JSON")
    ap.add_argument("--write-model", type=Path, nargs="*", default=None, help="model folders to update")
    a = ap.parse_args()
    if a.from_json:
        ratios = json.loads(a.from_json.read_text())["ratios"]
        skipped = dict.fromkeys(ratios, 0)
        return finish(a, ratios, skipped)
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.segmentation.cellpose_seg import segment

    by_class: dict[str, list[str]] = defaultdict(list)
    with open(a.pbc / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == a.split and (not a.classes or row["class"] in a.classes):
                by_class[row["class"]].append(row["path"])
    rng = np.random.default_rng(a.seed)
    ratios: dict[str, list[float]] = {}
    skipped: dict[str, int] = {}
    for cls in sorted(by_class):
        paths = sorted(by_class[cls])
        pick = rng.permutation(len(paths))[: a.per_class]
        ratios[cls], skipped[cls] = [], 0
        for k, i in enumerate(pick, 1):
            image = read_image(a.pbc / paths[i])
            r = centre_ratio(image, segment(image), a.min_others)
            if r is None:
                skipped[cls] += 1
            else:
                ratios[cls].append(r)
            print(f"\r{cls}: {k}/{len(pick)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    return finish(a, ratios, skipped)


def finish(a, ratios: dict[str, list[float]], skipped: dict[str, int]) -> int:
    print(
        f"{'class':14s} {'n':>4s} {'skip':>4s} {'p5':>6s} {'p25':>6s} {'median':>6s} {'p75':>6s} {'p95':>6s}"
    )
    summary = {}
    for cls, v in ratios.items():
        q = np.percentile(v, [5, 25, 50, 75, 95]) if v else [float("nan")] * 5
        summary[cls] = {
            "n": len(v),
            "skipped": skipped[cls],
            "percentiles_5_25_50_75_95": [float(x) for x in q],
        }
        print(f"{cls:14s} {len(v):4d} {skipped[cls]:4d} " + " ".join(f"{x:6.2f}" for x in q))
    if a.out:
        a.out.write_text(json.dumps({"summary": summary, "ratios": ratios}, indent=1))
    if a.write_model:
        write_model(a, ratios)
    return 0


def write_model(a, ratios: dict[str, list[float]]) -> None:
    from napari_cytodiffusion.classify.size import MARGIN, ranges_from_percentiles
    from napari_cytodiffusion.model.folder import read_metadata, write_metadata

    low = {c: float(np.percentile(v, 1)) for c, v in ratios.items() if len(v) >= 20}
    high = {c: float(np.percentile(v, 99)) for c, v in ratios.items() if len(v) >= 20}
    ranges = ranges_from_percentiles(low, high)
    if "platelet" in ranges:
        ranges["platelet"][0] = None
    entry = {
        "unit": "equivalent diameter / median equivalent diameter of the smear's whole red cells",
        "source": (
            f"PBC {a.split} split, {sum(len(v) for v in ratios.values())} images segmented with the shipped "
            f"smear model, against pipeline.reference_diameter (benchmarks/class_size.py); 1st-99th "
            f"percentile widened by {MARGIN}; platelets "
            "without a lower bound (PBC shows mostly large platelets and clumps)"
        ),
        "n": {c: len(v) for c, v in ratios.items()},
        "range": ranges,
    }
    for folder in a.write_model:
        meta = read_metadata(folder)
        meta.extra["class_sizes"] = entry
        write_metadata(folder, meta)
        print(f"wrote class_sizes to {folder}")


if __name__ == "__main__":
    raise SystemExit(main())
