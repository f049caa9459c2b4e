"""UNet inference cost per backend on this machine: PyTorch (NCHW, channels-last) vs ONNX Runtime.

Prints milliseconds per UNet evaluation (one image, one class, one timestep) at several batch
sizes, then classifies the same PBC val cells with the default model on each backend (same seed):
cells/s, UNet calls per cell and whether the predictions agree.

    python benchmarks/unet_backends.py [--cells 160] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def per_eval_ms(fn, batch: int, repeats: int) -> float:
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - t0) / repeats / batch


def bench_batch(model, ort, b: int) -> dict[str, float]:
    """ms per evaluation at batch size ``b`` for the PyTorch UNet (two layouts) and ONNX Runtime."""
    import torch

    size, unet = model.size, model.unet
    x = torch.randn(b, 3, size, size)
    t = torch.randint(0, 1000, (b,))
    c = torch.randint(0, len(model.classes), (b,))
    xc = x.contiguous(memory_format=torch.channels_last)
    reps = max(3, 640 // b)
    with torch.inference_mode():
        row = {
            "torch_channels_last": per_eval_ms(lambda: unet(xc, t, class_labels=c), b, reps),
            "torch_nchw": per_eval_ms(lambda: unet(x.contiguous(), t, class_labels=c), b, reps),
            "onnxruntime": per_eval_ms(lambda: ort(x, t, class_labels=c), b, reps),
        }
    return {k: round(v, 2) for k, v in row.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--pbc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc"
    )
    ap.add_argument("--cells", type=int, default=160, help="PBC val cells to classify per backend (0 = skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128])
    args = ap.parse_args()
    import torch

    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV
    from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR

    torch.set_num_threads(args.threads)
    models = {}
    for backend in ("torch", "onnx"):
        os.environ[BACKEND_ENV] = backend
        m = load_model(DEFAULT_MODEL_DIR)
        t0 = time.perf_counter()
        m.inference_unet()
        models[backend] = (m, time.perf_counter() - t0)
    out: dict = {"threads": args.threads, "cpu": os.cpu_count(), "per_eval_ms": {}}
    out["onnx_first_use_seconds"] = round(models["onnx"][1], 2)
    for b in args.batches:
        out["per_eval_ms"][b] = bench_batch(models["torch"][0], models["onnx"][0].inference_unet(), b)
        print(b, out["per_eval_ms"][b], flush=True)
    if args.cells:
        from napari_cytodiffusion.io.datasets import load_single_cell_crops, map_classes, read_labelled

        m0 = models["torch"][0]
        pre = m0.metadata.preprocessing
        ls = read_labelled(args.pbc / "labels.csv", split="val")
        idx = np.random.default_rng(0).permutation(len(ls.paths))[: args.cells]
        crops = load_single_cell_crops(
            [ls.paths[i] for i in idx], pre["size"], pre["single_cell"]["center_crop_fraction"]
        )
        y = map_classes([ls.classes[i] for i in idx], m0.classes)
        preds = {}
        for backend, (m, _) in models.items():
            t0 = time.perf_counter()
            r = classify_crops(m, crops, speed="balanced", seed=0)
            dt = time.perf_counter() - t0
            preds[backend] = r.pred
            out[f"classify_{backend}"] = {
                "cells": len(crops),
                "cells_per_second": round(len(crops) / dt, 2),
                "unet_calls_per_cell": round(float(r.unet_calls.mean()), 1),
                "accuracy": round(float((r.pred == y).mean()), 4),
            }
            print(backend, out[f"classify_{backend}"], flush=True)
        out["predictions_identical"] = float((preds["torch"] == preds["onnx"]).mean())
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
