"""How much does a cell's result depend on the noise drawn for it? Two runs of the same cells, two seeds.

The classifier scores each class by denoising the cell under noise drawn from the run's ``--seed``
and the cell's pixels (``classify.engine.crop_ids``), so a run is reproducible, and another seed
is another draw. This compares two ``predictions.csv`` of the same cells under two seeds (from
``evaluate`` or single-cell ``classify``): how often the call, the flag and its reason agree, and
how far certainty, P(correct) and the anomaly score move. With ``true_class`` (``evaluate``) it
also says how often the call was right in both, in one only, or in neither.

Usage::

    napari-cytodiffusion evaluate --data ../shared/data/pbc/labels.csv --split val --out runs/s0
    napari-cytodiffusion evaluate --data ../shared/data/pbc/labels.csv --split val --seed 1 --out runs/s1
    python benchmarks/seed_stability.py runs/s0/predictions.csv runs/s1/predictions.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def compare(a, b) -> dict:
    """Agreement of two runs' tables (pandas frames with ``path`` and the classify columns)."""
    if len(a) != len(b) or not (a["path"].to_numpy() == b["path"].to_numpy()).all():
        raise SystemExit("the two runs are not of the same cells in the same order")
    out: dict = {"n": len(a), "same_call": float((a["class"] == b["class"]).mean())}
    fa, fb = a["flagged"].astype(bool).to_numpy(), b["flagged"].astype(bool).to_numpy()
    out["flagged_share"] = [float(fa.mean()), float(fb.mean())]
    out["same_flag"] = float((fa == fb).mean())
    out["flagged_in_one_only"] = int((fa != fb).sum())
    either = fa | fb
    out["same_flag_among_flagged_in_either"] = float((fa == fb)[either].mean()) if either.any() else None
    for col in ("certainty", "p_correct", "anomaly"):
        d = np.abs(a[col].to_numpy(float) - b[col].to_numpy(float))
        out[f"{col}_abs_difference"] = {
            "median": float(np.median(d)), "p90": float(np.percentile(d, 90)), "max": float(d.max())
        }  # fmt: skip
    out["unet_calls_per_cell"] = [float(a["unet_calls"].mean()), float(b["unet_calls"].mean())]
    if "true_class" in a:
        ra, rb = a["correct"].astype(bool).to_numpy(), b["correct"].astype(bool).to_numpy()
        out["accuracy"] = [float(ra.mean()), float(rb.mean())]
        out["right_in_both"] = int((ra & rb).sum())
        out["right_in_one_only"] = int((ra != rb).sum())
        out["wrong_in_both"] = int((~ra & ~rb).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path, help="predictions.csv of the first seed")
    ap.add_argument("second", type=Path, help="predictions.csv of the second seed, same cells")
    args = ap.parse_args(argv)
    import pandas as pd

    print(json.dumps(compare(pd.read_csv(args.first), pd.read_csv(args.second)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
