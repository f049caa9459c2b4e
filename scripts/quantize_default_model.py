"""Make the int8 UNet of the default model (``onnx/unet_int8.onnx`` in its folder).

Convolutions only, activations calibrated on noised PBC *train* cells (never val or test);
see :mod:`napari_cytodiffusion.model.quantize` and ``benchmarks/unet_int8.py`` for why.

With ``--recalibrate CACHE.npz`` (the crops cache of ``scripts/train_default_model.py``: the
calibration hold-out of PBC train and PBC val), the classifier's temperature, P(correct) model and
anomaly profile are refitted on the int8 network's errors of the hold-out cells (the engine settings
are kept) and stored as ``extra["int8"]["classifier_calibration"]``, used whenever the int8 UNet
runs; the result on PBC val is stored beside them.

Usage::

    python scripts/quantize_default_model.py [--model src/napari_cytodiffusion/data/models/pbc32]
        [--pbc ../shared/data/pbc] [--cells 256] [--batches 16] [--recalibrate CACHE.npz [--skip-quantize]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument(
        "--pbc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc"
    )
    ap.add_argument("--cells", type=int, default=256, help="random PBC train cells for the activation ranges")
    ap.add_argument("--batches", type=int, default=16, help="calibration batches of 64 noised inputs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--recalibrate", type=Path, default=None, help="crops cache with cal_*/val_* arrays")
    ap.add_argument("--skip-quantize", action="store_true", help="keep the existing int8 file")
    args = ap.parse_args(argv)
    if not args.skip_quantize:
        quantize(args)
    if args.recalibrate:
        recalibrate_int8(args.model, args.recalibrate, keep_presets=args.skip_quantize)
    return 0


def recalibrate_int8(folder: Path, cache: Path, keep_presets: bool = False) -> None:
    import os

    from napari_cytodiffusion.classify.calibration import recalibrate
    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.evaluate.metrics import classification_metrics
    from napari_cytodiffusion.model.folder import load_model, read_metadata, write_metadata
    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

    os.environ[BACKEND_ENV] = "int8"
    model = load_model(folder)
    z = np.load(cache)
    idx = {c: i for i, c in enumerate(model.classes)}
    remap = np.array([idx.get(str(c), -1) for c in z["classes"]])
    t0 = time.perf_counter()
    cal_y = remap[z["cal_labels"]]
    new, summary = recalibrate(model, z["cal_images"][cal_y >= 0], cal_y[cal_y >= 0])
    new.pop("engine", None)
    from napari_cytodiffusion.model import int8_numerics

    meta = read_metadata(folder)
    net = model.inference_unet()
    here = int8_numerics.record(net, model.size, model.metadata.n_classes)
    stored = meta.extra["int8"].get("numerics")
    same_numerics = not stored or int8_numerics.matches(stored, net, model.size, model.metadata.n_classes)
    if keep_presets:  # the same network: the presets' own constants (fitted on it) stay valid ...
        old_presets = meta.extra["int8"].get("classifier_calibration", {}).get("presets")
        if old_presets and same_numerics:
            new["presets"] = old_presets
        elif old_presets:  # ... if they were fitted on this machine's numerics
            print(f"dropped the int8 presets {sorted(old_presets)}: fitted on another machine's numerics; "
                  "refit them (scripts/calibrate_presets.py --backend int8)")  # fmt: skip
    meta.extra["int8"]["classifier_calibration"] = new
    meta.extra["int8"]["numerics"] = here
    model.metadata.extra = meta.extra
    val_y = remap[z["val_labels"]]
    val_x, val_y = z["val_images"][val_y >= 0], val_y[val_y >= 0]
    res = classify_crops(model, val_x, seed=0)
    m = classification_metrics(val_y, res.pred, res.probs, res.p_correct, model.classes)
    keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "ece")
    val = {k: m[k] for k in keys}
    val["selective_accuracy_p_correct_0.95"] = m["selective_accuracy_p_correct_0.95"]
    val["coverage_p_correct_0.95"] = m["coverage_p_correct_0.95"]
    val["unet_calls_per_cell"] = float(res.unet_calls.mean())
    val["dataset"] = "PBC val split (never used for training or calibration)"
    meta.extra["int8"]["validation"] = val
    meta.extra["int8"]["calibration_cells"] = summary
    write_metadata(folder, meta)
    print(json.dumps(val, indent=1), f"\n{time.perf_counter() - t0:.0f} s")


def quantize(args) -> None:
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, read_labelled
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.quantize import quantize_model

    model = load_model(args.model)
    train = read_labelled(args.pbc / "labels.csv", split="train")
    idx = np.sort(np.random.default_rng(args.seed).permutation(len(train.paths))[: args.cells])
    pre = model.metadata.preprocessing
    crops = load_single_cell_crops(
        [train.paths[i] for i in idx], pre["size"], pre["single_cell"]["center_crop_fraction"]
    )
    t0 = time.perf_counter()
    out = quantize_model(
        model,
        crops,
        n_batches=args.batches,
        seed=args.seed,
        data_note=f"PBC train split (Acevedo et al. 2020, CC BY 4.0), {len(crops)} random cells, seed {args.seed}",
    )
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
