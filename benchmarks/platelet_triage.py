"""Do platelets belong in the triage? The domain check of `analyze` outputs with platelets counted and left out.

Reads one or more `analyze` output folders (``NAME_cells.csv`` per image) and prints, per folder, the pooled
domain check (cells above the anomaly threshold against the ~4 % expected, one-sided binomial test) with the
cells called platelet counted and left out, and how many of those platelets are anomalous (single platelets:
too small for any other class, 0.71 red cells for the shipped models). The threshold is that of the model and preset the folder was analysed with.

Usage (the figures of docs/measurements.md: 48 PBC val images, 6 per class drawn at random in stop 38, and every other
TXL-PBC val field per source, the source told by the image size)::

    python benchmarks/platelet_triage.py --pbc-sample 6 > pbc48.txt   # a fresh stratified draw
    napari-cytodiffusion analyze $(cat pbc48.txt) --out runs/pbc48
    napari-cytodiffusion analyze $(cat txl_Kaggle.txt) --out runs/txl_Kaggle   # likewise Raabin, BCCD
    python benchmarks/platelet_triage.py runs/pbc48 runs/txl_Kaggle runs/txl_Raabin runs/txl_BCCD
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def single_platelet_size(model, ref: dict) -> float:
    """Largest size of a single platelet: the smear-platelet reference's bound, else the smallest other class."""
    from napari_cytodiffusion.classify.size import class_ranges

    for comp in (ref.get("profile") or {}).get("components", []):
        if "max_size" in comp and model.classes[int(comp["class"])] == "platelet":
            return float(comp["max_size"])
    ranges = class_ranges(model.metadata.extra)
    lows = [lo for c, (lo, _) in ranges.items() if c != "platelet" and lo > 0]
    return float(min(lows)) if lows else float("inf")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from napari_cytodiffusion.classify.anomaly import domain_check
    from napari_cytodiffusion.classify.classifier import calibration_for
    from napari_cytodiffusion.io.results import read_smear_outputs, saved_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", type=Path, help="analyze output folders")
    ap.add_argument("--pbc-sample", type=int, default=0, help="print K random PBC val image paths per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.pbc_sample:
        rows = pd.read_csv(args.data / "pbc" / "labels.csv")
        rows = rows[rows["split"] == "val"]
        for _, group in rows.groupby("class"):
            for path in group.sample(args.pbc_sample, random_state=args.seed)["path"]:
                print(args.data / "pbc" / path)
        return 0
    if not args.folders:
        ap.error("give analyze output folders (or --pbc-sample K)")
    report = {}
    for folder in args.folders:
        files = sorted(folder.glob("*_cells.csv"))
        if not files:
            print(f"{folder}: no NAME_cells.csv", file=sys.stderr)
            return 2
        saved = read_smear_outputs(files[0])
        model, _ = saved_model(saved)
        ref = calibration_for(model, saved.result.parameters.get("speed", "balanced"))["anomaly"]
        thr, spec = float(ref["threshold"]), float(ref.get("specificity", 0.96))
        t = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
        c = t[t["classified"].astype(bool)]
        plt = (c["class"] == "platelet").to_numpy()
        a = c["anomaly"].to_numpy(dtype=float)
        single = (
            plt & (c["size"].to_numpy(dtype=float) <= single_platelet_size(model, ref))
            if "size" in c
            else plt
        )
        row = {
            "images": len(files),
            "counted": domain_check(a, thr, spec),
            "left_out": domain_check(a[~plt], thr, spec),
            "platelets": int(plt.sum()),
            "platelets_anomalous": int((a[plt] > thr).sum()),
            "single_platelets": int(single.sum()),
            "single_platelets_anomalous": int((a[single] > thr).sum()),
        }
        report[str(folder)] = row
        both = ", ".join(
            f"{k.replace('_', ' ')}: {row[k]['n_anomalous']} of {row[k]['n']} (p {row[k]['p_value']:.2g}"
            f"{', shifted' if row[k]['shifted'] else ''})"
            for k in ("counted", "left_out")
        )
        print(
            f"{folder.name}: {len(files)} images; platelets {both}; platelets anomalous "
            f"{row['platelets_anomalous']} of {row['platelets']} (single {row['single_platelets_anomalous']} "
            f"of {row['single_platelets']}); others {np.sum(a[~plt] > thr)} of {int((~plt).sum())}"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
