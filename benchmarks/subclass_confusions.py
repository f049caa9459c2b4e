"""Which PBC subclasses the classifier's errors fall on (from an ``evaluate`` run, no new classification).

PBC's ``labels.csv`` splits two classes into subclasses the shipped models do not tell apart:
``ig`` into promyelocyte, myelocyte and metamyelocyte, ``neutrophil`` into band and segmented. Joined
with an ``evaluate`` run's ``predictions.csv`` (by file name), this prints, per subclass, how many cells
there are, the share called their class, the share flagged, and every call::

    napari-cytodiffusion evaluate --data ../shared/data/pbc/labels.csv --split val --out runs/val
    python benchmarks/subclass_confusions.py --predictions runs/val/predictions.csv \\
        --labels ../shared/data/pbc/labels.csv [--classes ig neutrophil]

Measured on the shipped models' validation runs (session 48; ``pbc32`` PyTorch float32 ``balanced``,
seed 0, the run of its validation record): of 94 metamyelocytes 12 were called neutrophil (13 %), of 117
myelocytes 1, of 62 promyelocytes none; of 169 band neutrophils 7 were called IG (4 %), of 151 segmented
neutrophils none (151 right). ``pbc32-fast`` (ONNX float32): metamyelocytes 16 of 94 called neutrophil,
bands 7 of 169 called IG, segmented 151 of 151 right. The errors between the two classes lie where a
metamyelocyte meets a band.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=Path, required=True, help="predictions.csv of an evaluate run")
    ap.add_argument("--labels", type=Path, required=True, help="PBC's labels.csv (path,class,subclass,split)")
    ap.add_argument("--classes", nargs="+", default=["ig", "neutrophil"], help="true classes to break down")
    args = ap.parse_args(argv)

    import pandas as pd

    labels = pd.read_csv(args.labels)
    pred = pd.read_csv(args.predictions)
    labels["key"] = labels["path"].map(lambda p: Path(p).name)
    pred["key"] = pred["path"].map(lambda p: Path(p).name)
    if labels["key"].duplicated().any():
        raise SystemExit(f"{args.labels}: file names are not unique, cannot join by name")
    joined = pred.merge(labels[["key", "subclass"]], on="key", how="left")
    missing = int(joined["subclass"].isna().sum())
    if missing:
        print(f"{missing} predictions have no subclass in {args.labels} (left out)")
    joined = joined.dropna(subset=["subclass"])
    for cls in args.classes:
        cells = joined[joined["true_class"] == cls]
        if cells.empty:
            print(f"\n{cls}: no cells")
            continue
        summary = cells.groupby("subclass").agg(
            cells=("correct", "size"), called_right=("correct", "mean"), flagged=("flagged", "mean")
        )
        print(f"\n{cls} ({len(cells)} cells)\n{summary.round(3).to_string()}")
        print(pd.crosstab(cells["subclass"], cells["class"]).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
