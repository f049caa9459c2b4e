"""Calibrate a trained model on its held-out calibration cells and measure it on PBC val.

Steps (all recorded in the model metadata's ``calibration`` and ``validation``):
1. full-grid paired errors on the calibration cells over a 31-timestep candidate grid;
2. per-timestep signal/noise of the error gap → timestep order, weights and scales;
3. the adaptive test threshold (``drop_z``): the cheapest setting whose calibration
   accuracy is within 0.5 points of the full grid;
4. temperature, P(correct) logistic model and anomaly threshold from an adaptive run;
5. validation metrics on PBC ``val`` (full grid and adaptive, same cells, same seed).

A refitted anomaly profile drops its smear-platelet reference: run
``scripts/calibrate_smear_platelets.py`` afterwards.

Usage::

    python scripts/calibrate_default_model.py --model runs/pbc32 --cache pbc_cache.npz [--device cuda]
        [--ood-npz falciparum.npz] [--heldout-class erythroblast] [--refit-only [--null]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_cytodiffusion.classify.calibration import fit_calibration, timestep_statistics
from napari_cytodiffusion.classify.classifier import finish
from napari_cytodiffusion.classify.engine import (
    DEFAULT_TIMESTEPS,
    EngineConfig,
    crop_ids,
    diffusion_errors,
    merge_results,
)
from napari_cytodiffusion.crops import to_model_tensor
from napari_cytodiffusion.evaluate.metrics import auroc, classification_metrics, sensitivity_at_specificity
from napari_cytodiffusion.model.folder import load_model, write_metadata


def run(model, crops, cfg, batch=256):
    cfg.batch_size = 4096 if model.device.type == "cuda" else None

    ac = model.alphas_cumprod()
    parts = []
    for s in range(0, len(crops), batch):
        x0 = to_model_tensor(crops[s : s + batch]).to(model.device)
        parts.append(
            diffusion_errors(
                model.unet, ac, x0, model.metadata.n_classes, cfg, cell_ids=crop_ids(crops[s : s + batch])
            )
        )
    return merge_results(parts, model.metadata.n_classes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--ood-npz", type=Path, default=None)
    ap.add_argument(
        "--heldout-class", default=None, help="class missing from the model: its val cells are the anomalies"
    )
    ap.add_argument("--out", type=Path, default=None, help="write metrics JSON here")
    ap.add_argument("--ood-limit", type=int, default=None, help="use N evenly spaced OOD cells")
    ap.add_argument("--smoke", action="store_true", help="8 cells and 6 timesteps: checks the script runs")
    ap.add_argument(
        "--refit-only",
        action="store_true",
        help="keep the model's engine settings (timesteps, weights, drop_z); refit temperature, "
        "P(correct) and anomaly profile from an adaptive run, then validate (adaptive only)",
    )
    ap.add_argument(
        "--null",
        action="store_true",
        help="with --refit-only: evaluate the null label at every unit and fit the anomaly profile on its "
        "gap to the winner's error (anomaly.profile_features(gaps='null')) instead of the class gaps",
    )
    args = ap.parse_args(argv)
    if args.null and not args.refit_only:
        ap.error("--null goes with --refit-only")
    import torch

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device=dev)
    z = np.load(args.cache)
    all_classes = [str(c) for c in z["classes"]]
    idx = {c: i for i, c in enumerate(model.classes)}
    remap = np.array([idx.get(c, -1) for c in all_classes])
    cal_x, cal_y = z["cal_images"], remap[z["cal_labels"]]
    val_x, val_y = z["val_images"], remap[z["val_labels"]]
    held_x = val_x[val_y < 0]
    cal_x, cal_y = cal_x[cal_y >= 0], cal_y[cal_y >= 0]
    val_x, val_y = val_x[val_y >= 0], val_y[val_y >= 0]
    c = model.metadata.n_classes
    grid = DEFAULT_TIMESTEPS
    if args.smoke:
        grid = DEFAULT_TIMESTEPS[::6]
        cal_x, cal_y, val_x, val_y, held_x = (
            cal_x[::120],
            cal_y[::120],
            val_x[::200],
            val_y[::200],
            held_x[:4],
        )
    t0 = time.time()
    old_cal = dict(model.metadata.calibration or {})
    if args.refit_only:
        engine = dict(old_cal["engine"])
        cfg = EngineConfig(**engine, adaptive=True, null=args.null)
        calib = fit_calibration(run(model, cal_x, cfg), cal_y, c)  # the null profile when null errors are in
        calib["engine"] = engine
        # the engine stays, so the presets' own constants (calibrate_presets.py) still hold
        for key in ("timestep_snr", "tuning_on_calibration", "engine_from_teacher", "presets"):
            if key in old_cal:
                calib[key] = old_cal[key]
        return _validate(
            args, model, calib, cfg, engine, dev, val_x, val_y, held_x, time.time() - t0, full=False
        )
    full = run(model, cal_x, EngineConfig(timesteps=grid, adaptive=False))
    stats = timestep_statistics(full.errors, cal_y, grid, keep=24)
    engine = {k: stats[k] for k in ("timesteps", "weights", "scales")}
    # full-grid accuracy on cal with the fitted weights, then the cheapest adaptive setting within 0.5 pt
    base = EngineConfig(**engine, adaptive=False)
    acc_full = (finish(run(model, cal_x, base), model.classes, {}, 0, {}).pred == cal_y).mean()
    tuning = []
    chosen = None
    for dz in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        r = run(model, cal_x, EngineConfig(**engine, adaptive=True, drop_z=dz))
        acc = (finish(r, model.classes, {}, 0, {}).pred == cal_y).mean()
        tuning.append({"drop_z": dz, "accuracy": float(acc), "calls_per_cell": float(r.calls.mean())})
        if chosen is None and acc >= acc_full - 0.005:
            chosen = dz
    chosen = chosen or 4.0
    engine["drop_z"] = chosen
    cfg = EngineConfig(**engine, adaptive=True)
    cal_run = run(model, cal_x, cfg)
    calib = fit_calibration(cal_run, cal_y, c)
    calib["engine"] = engine
    calib["timestep_snr"] = stats["snr"]
    calib["tuning_on_calibration"] = {"full_grid_accuracy": float(acc_full), "adaptive": tuning}
    return _validate(args, model, calib, cfg, engine, dev, val_x, val_y, held_x, time.time() - t0, full=True)


def _validate(args, model, calib, cfg, engine, dev, val_x, val_y, held_x, secs_cal, full: bool) -> int:
    """Measure on PBC val (and the held-out class / OOD set), store in the metadata, print."""
    old_val = dict(model.metadata.validation or {})
    out = {}
    runs = [("adaptive", cfg)]
    if full:
        runs.insert(0, ("full_grid", EngineConfig(**engine, adaptive=False)))
    for name, ecfg in runs:
        t1 = time.time()
        r = run(model, val_x, ecfg)
        dt = time.time() - t1
        res = finish(r, model.classes, calib, dt, {})
        m = classification_metrics(val_y, res.pred, res.probs, res.p_correct, model.classes)
        m["unet_calls_per_cell"] = float(r.calls.mean())
        m["cells_per_second_" + dev] = len(val_y) / dt
        out[name] = m
        if name == "adaptive":
            val_anom = res.anomaly
    if len(held_x):
        rh = finish(run(model, held_x, cfg), model.classes, calib, 0, {})
        out["heldout_class"] = {
            "class": args.heldout_class,
            "n": len(held_x),
            "anomaly_auroc": auroc(val_anom, rh.anomaly),
            "sensitivity_at_specificity_0.96": sensitivity_at_specificity(val_anom, rh.anomaly),
        }
    if args.ood_npz:
        o = np.load(args.ood_npz)["images"][:: 100 if args.smoke else 1]
        if args.ood_limit and len(o) > args.ood_limit:
            o = o[np.linspace(0, len(o) - 1, args.ood_limit).round().astype(int)]
        ro = finish(run(model, o, cfg), model.classes, calib, 0, {})
        out["ood"] = {
            "set": str(args.ood_npz.name),
            "n": len(o),
            "anomaly_auroc": auroc(val_anom, ro.anomaly),
            "sensitivity_at_specificity_0.96": sensitivity_at_specificity(val_anom, ro.anomaly),
        }
    model.metadata.calibration = calib
    a = out["adaptive"]
    model.metadata.validation = {
        # the presets' figures (``calibrate_presets.py --validate``) are not this run's to drop
        **{k: old_val[k] for k in ("presets", "calibration_cells") if k in old_val},
        "dataset": "PBC val split (1,690 cells; never used for training or calibration)",
        **{
            k: a[k]
            for k in (
                "n",
                "accuracy",
                "balanced_accuracy",
                "macro_f1",
                "ece",
                "selective_accuracy_p_correct_0.95",
                "coverage_p_correct_0.95",
                "unet_calls_per_cell",
                "per_class_recall",
            )
        },
        "full_grid": {
            k: out["full_grid"][k] for k in ("accuracy", "balanced_accuracy", "unet_calls_per_cell")
        }
        if "full_grid" in out
        else old_val.get("full_grid", {}),
        **({"anomaly_heldout_class": out["heldout_class"]} if "heldout_class" in out else {}),
        **({"anomaly_ood": out["ood"]} if "ood" in out else {}),
    }
    write_metadata(args.model, model.metadata)
    out["calibration_seconds"] = secs_cal
    out["tuning"] = calib.get("tuning_on_calibration")
    txt = json.dumps(out, indent=1, default=float)
    print(txt)
    if args.out:
        args.out.write_text(txt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
