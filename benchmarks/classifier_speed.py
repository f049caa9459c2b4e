"""Full grid vs adaptive generative classification on the same PBC val cells, in one run.

Prints UNet calls per cell, cells per second and accuracy of both, the backend that ran the UNet
(``NAPARI_CYTODIFFUSION_BACKEND``), and the time from a fresh Python to a model ready to classify
(folder read and checked, inference network opened).

    python benchmarks/classifier_speed.py [--n 64] [--threads 2] [--speeds full balanced fast] [--device cpu]
        [--decided-band-units K]

With ``--decided-band-units K``, each adaptive speed runs a second time right after the first, on
the same cells, with a decided cell (one class left) evaluated only until each noise band of the
anomaly profile holds K of its units (``SPEED/decided-K`` in the output). Calls, speed and
accuracy are comparable (the calls are the same by construction); the anomaly score is not, as the
model's constants were fitted without the rule (docs/measurements.md: measured, not adopted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--pbc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc"
    )
    ap.add_argument("--n", type=int, default=64, help="cells (stratified over the 8 classes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--speeds", nargs="+", default=["full", "balanced", "fast"])
    ap.add_argument("--model", default="default", help="model folder (default: the shipped model)")
    ap.add_argument(
        "--decided-band-units", type=int, default=None, help="also run each adaptive speed with this rule"
    )
    args = ap.parse_args()

    # cold model load, in a fresh interpreter as a user would see it
    code = (
        "import time; t=time.perf_counter(); from napari_cytodiffusion.model.folder import load_model; "
        "from napari_cytodiffusion.model.registry import resolve_model; "
        f"m=load_model(resolve_model({args.model!r}), device={args.device!r}); m.inference_unet(); "
        "print(time.perf_counter()-t)"
    )
    load_s = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )

    import pandas as pd
    import torch

    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.onnx_backend import backend_name
    from napari_cytodiffusion.model.registry import resolve_model

    torch.set_num_threads(args.threads)
    model = load_model(resolve_model(args.model), device=args.device)
    df = pd.read_csv(args.pbc / "labels.csv")
    df = df[df.split == "val"].sample(frac=1.0, random_state=0).groupby("class").head(args.n // 8)
    crops = single_cell_crops([read_image(args.pbc / p) for p in df.path], model.metadata.preprocessing)
    truth = np.array([model.class_index(c) for c in df["class"]])
    classify_crops(model, crops[:2], speed="fast")  # warm-up
    out = {
        "model": model.short_id(),
        "cells": len(truth),
        "threads": args.threads,
        "device": args.device,
        "backend": backend_name(model),
        "model_ready_seconds": round(load_s, 2),
    }
    runs = []
    for speed in args.speeds:
        runs.append((speed, speed, {}))
        if args.decided_band_units is not None and speed != "full":
            k = args.decided_band_units
            runs.append((f"{speed}/decided-{k}", speed, {"decided_band_units": k}))
    for name, speed, overrides in runs:
        t0 = time.perf_counter()
        res = classify_crops(model, crops, speed=speed, seed=0, **overrides)
        dt = time.perf_counter() - t0
        out[name] = {
            "unet_calls_per_cell": round(float(res.unet_calls.mean()), 1),
            "cells_per_second": round(len(truth) / dt, 2),
            "ms_per_unet_call": round(1000 * dt / res.unet_calls.sum(), 2),
            "accuracy": round(float((res.pred == truth).mean()), 4),
        }
    if "full" in out:
        for name, _, _ in runs:
            if name != "full":
                out[name]["call_reduction_vs_full"] = round(
                    out["full"]["unet_calls_per_cell"] / out[name]["unet_calls_per_cell"], 2
                )
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
