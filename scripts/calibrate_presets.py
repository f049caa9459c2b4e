"""Fit the classifier's calibration for the speed presets of a model folder.

A preset that evaluates other units than ``balanced`` changes how noisy the paired errors are,
so its probabilities, P(correct) and anomaly profile need their own constants. For each speed,
this runs the preset on the calibration hold-out of ``scripts/train_default_model.py``'s crops
cache, refits temperature, P(correct) and the anomaly profile/threshold, and stores them as
``presets[speed]`` in the calibration block of the chosen backend (``calibration`` for PyTorch,
``extra["int8"]["classifier_calibration"]`` for the int8 UNet). With ``--validate`` the preset is
then measured on PBC val (stored under ``validation["presets"][speed][backend]``).

Usage::

    python scripts/calibrate_presets.py --model src/napari_cytodiffusion/data/models/pbc32 \\
        --cache pbc_cache.npz --backend int8 --speeds accurate [--validate] [--null accurate]

A refitted anomaly profile drops its smear-platelet reference: run
``scripts/calibrate_smear_platelets.py`` afterwards.

``fast`` evaluates only middle timesteps, so its anomaly profile is fitted on the noise bands
it sees (``profile["dims"]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

KEEP = ("temperature", "p_correct", "anomaly", "flag_below_p_correct", "n_calibration_cells",
        "p_correct_prior_strength", "calibration_accuracy")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="crops cache with cal_*/val_* arrays")
    ap.add_argument("--backend", choices=["torch", "int8"], required=True)
    ap.add_argument(
        "--speeds",
        nargs="+",
        default=["accurate"],
        choices=["balanced", "fast", "accurate", "full"],
        help="presets to refit (balanced: the block's main constants, the engine settings kept)",
    )
    ap.add_argument(
        "--null",
        nargs="*",
        default=None,
        metavar="SPEED",
        help="presets whose anomaly profile is fitted on the null label's gap (the engine then evaluates "
        "the null label at every unit); the others on the class gaps. Default: each as its profile is now",
    )
    ap.add_argument("--validate", action="store_true", help="also measure each preset on PBC val")
    args = ap.parse_args(argv)
    if args.null and not set(args.null) <= set(args.speeds):
        ap.error(f"--null {' '.join(sorted(set(args.null) - set(args.speeds)))}: not among --speeds")

    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

    os.environ[BACKEND_ENV] = args.backend
    from napari_cytodiffusion.classify.calibration import recalibrate
    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.evaluate.metrics import classification_metrics
    from napari_cytodiffusion.model.folder import load_model, read_metadata, write_metadata

    z = np.load(args.cache)
    if args.backend == "int8":  # every int8 block must come from one machine's numerics
        from napari_cytodiffusion.model import int8_numerics

        model = load_model(args.model)
        stored = model.metadata.extra.get("int8", {}).get("numerics")
        net = model.inference_unet()
        if stored and not int8_numerics.matches(stored, net, model.size, model.metadata.n_classes):
            print(f"{args.model}: its int8 constants were fitted on another machine's numerics "
                  f"({stored.get('host')}); refit them all here: scripts/refit_int8_constants.py")  # fmt: skip
            return 2
    for speed in args.speeds:
        t0 = time.perf_counter()
        model = load_model(args.model)
        idx = {c: i for i, c in enumerate(model.classes)}
        remap = np.array([idx.get(str(c), -1) for c in z["classes"]])
        cal_y = remap[z["cal_labels"]]
        try:
            null = None if args.null is None else speed in args.null
            new, summary = recalibrate(
                model, z["cal_images"][cal_y >= 0], cal_y[cal_y >= 0], speed=speed, null=null
            )
        except ValueError as exc:  # e.g. ``fast`` stops before the lowest/highest noise bands of the profile
            print(f"{speed} ({args.backend}): not calibrated: {exc}", flush=True)
            continue
        meta = read_metadata(args.model)
        block = meta.calibration if args.backend == "torch" else meta.extra["int8"]["classifier_calibration"]
        if speed == "balanced":  # the block's own constants; its engine settings and presets stay
            block.update({k: new[k] for k in KEEP if k in new})
            if args.backend == "int8":
                meta.extra["int8"]["calibration_cells"] = summary
            else:  # the hold-out figures of this fit, not an earlier one's
                meta.validation["calibration_cells"] = summary
        else:
            block.setdefault("presets", {})[speed] = {k: new[k] for k in KEEP if k in new} | {
                "fitted_on": summary
            }
        write_metadata(args.model, meta)
        print(f"{speed} ({args.backend}): calibrated on {summary['calibration_cells']} cells, "
              f"accuracy {summary['calibration_accuracy']:.3f}, {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        if not args.validate:
            continue
        if speed == "balanced":
            print("balanced: measure it with `napari-cytodiffusion evaluate`, record it with "
                  "scripts/record_validation.py", flush=True)  # fmt: skip
            continue
        t0 = time.perf_counter()
        model = load_model(args.model)
        val_y = remap[z["val_labels"]]
        val_x, val_y = z["val_images"][val_y >= 0], val_y[val_y >= 0]
        res = classify_crops(model, val_x, speed=speed, seed=0)
        m = classification_metrics(val_y, res.pred, res.probs, res.p_correct, model.classes)
        keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "ece", "ece_p_correct",
                "selective_accuracy_p_correct_0.95", "coverage_p_correct_0.95", "per_class_recall")  # fmt: skip
        val = {k: m[k] for k in keys}
        val["unet_calls_per_cell"] = float(res.unet_calls.mean())
        val["cells_per_second"] = len(val_x) / res.seconds
        thr = float(block["presets"][speed]["anomaly"]["threshold"])
        val["anomalous_share"] = float(np.mean(res.anomaly > thr))
        val["dataset"] = "PBC val split (never used for training or calibration)"
        meta = read_metadata(args.model)
        meta.validation.setdefault("presets", {}).setdefault(speed, {})[args.backend] = val
        write_metadata(args.model, meta)
        print(json.dumps({k: v for k, v in val.items() if k != "per_class_recall"}, indent=1),
              f"\n{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
