"""Does the size check hurt on cells like the training cells? PBC val images through the smear path.

Each PBC val image (one labelled cell at the centre, red cells around it) goes through the whole
smear pipeline (segment, pick stained cells, classify with the size check). The centre cell's call
with the size check (``class``) and without it (``class_by_appearance``: the same crop, the same
errors, no prior) are both compared with the label, so the difference is the size check alone.
Usage::

    python benchmarks/size_check_pbc.py --pbc ../shared/data/pbc [--per-class 100] [--out runs/size_check_pbc.json]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.registry import get_model
    from napari_cytodiffusion.pipeline import analyze

    model = get_model("default")
    by_class: dict[str, list[str]] = defaultdict(list)
    with open(a.pbc / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == a.split:
                by_class[row["class"]].append(row["path"])
    rng = np.random.default_rng(a.seed)
    rows, skipped = [], Counter()
    todo = [
        (c, p)
        for c in sorted(by_class)
        for p in np.array(sorted(by_class[c]))[rng.permutation(len(by_class[c]))[: a.per_class]]
    ]
    for k, (cls, rel) in enumerate(todo, 1):
        image = read_image(a.pbc / rel)
        res = analyze(image, model=model, speed=a.speed, seed=a.seed)
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
                }
            )
        print(f"\r{k}/{len(todo)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    w = [(x["true"], x["with"]) for x in rows]
    wo = [(x["true"], x["without"]) for x in rows]
    changed = [x for x in rows if x["with"] != x["without"]]
    out = {
        "n": len(rows),
        "skipped": dict(skipped),
        "size_check_applied": sum(x["size_check"] == "applied" for x in rows),
        "balanced_accuracy_without": balanced(wo),
        "balanced_accuracy_with": balanced(w),
        "accuracy_without": float(np.mean([t == c for t, c in wo])),
        "accuracy_with": float(np.mean([t == c for t, c in w])),
        "changed": len(changed),
        "fixed": sum(x["with"] == x["true"] for x in changed),
        "broken": sum(x["without"] == x["true"] for x in changed),
        "changes": dict(
            Counter(f"{x['true']}: {x['without']} -> {x['with']}" for x in changed).most_common()
        ),
    }
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps({"summary": out, "cells": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
