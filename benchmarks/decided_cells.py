"""What does stopping a decided cell early cost? (offline, on full-grid error dumps)

Once the paired test has left a cell one class, its call and probabilities cannot change; the
engine still evaluates that class at the remaining units for the anomaly profile. The engine's
``decided_band_units`` (stop once each noise band holds that many units) and ``decided_views``
(stop at the end of the first views, for ``accurate``'s rotated view) save those calls. This
script replays each rule on full-grid dumps of ``benchmarks/full_grid_errors.py`` exactly as the
engine runs it (``anomaly_features.replay``), refits every calibration constant (temperature,
P(correct), anomaly profile and threshold) on the calibration dump under the rule, as
``scripts/calibrate_presets.py`` would, and prints per rule: accuracy, balanced accuracy, ECE,
selective accuracy and coverage at P(correct) >= 0.95 and calls per cell on the normal test
cells, and anomaly AUROC and sensitivity at specificity 0.96 of the out-of-distribution cells
against them.

Usage::

    python benchmarks/full_grid_errors.py --int8 --views 2 --without-null --cache pbc_cache.npz \\
        --split cal --per-class 1000 --out runs/g2_cal.npz      # likewise val, and OOD crops:
    python benchmarks/full_grid_errors.py ... --cache falciparum.npz --split images --out runs/g2_falc.npz
    python benchmarks/decided_cells.py --calibration runs/g2_cal.npz --test runs/g2_val.npz \\
        --ood runs/g2_falc.npz [--model pbc32] [--backend int8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_features import load_dumps, replay

#: (speed preset, rule name, engine overrides)
RULES = [
    ("balanced", "every unit", {}),
    ("balanced", "1 unit per band", {"decided_band_units": 1}),
    ("balanced", "2 units per band", {"decided_band_units": 2}),
    ("balanced", "3 units per band", {"decided_band_units": 3}),
    ("accurate", "every unit", {}),
    ("accurate", "1 unit per band", {"decided_band_units": 1}),
    ("accurate", "2 units per band", {"decided_band_units": 2}),
    ("accurate", "first view only", {"decided_views": 1}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=Path, nargs="+", required=True, help="dumps of calibration cells")
    ap.add_argument("--test", type=Path, nargs="+", required=True, help="dumps of normal test cells")
    ap.add_argument("--ood", type=Path, nargs="+", required=True, help="dumps of out-of-distribution cells")
    ap.add_argument("--model", default=None, help="model whose engine settings to replay (default: shipped)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from napari_cytodiffusion.classify.calibration import fit_calibration
    from napari_cytodiffusion.classify.classifier import PRESETS, finish
    from napari_cytodiffusion.classify.engine import EngineConfig
    from napari_cytodiffusion.evaluate.metrics import (
        auroc,
        classification_metrics,
        sensitivity_at_specificity,
    )
    from napari_cytodiffusion.model.folder import read_metadata
    from napari_cytodiffusion.model.registry import resolve_model

    meta = read_metadata(resolve_model(args.model))
    engine = {"engine": dict((meta.calibration or {}).get("engine", {}))}
    cal, test, ood = load_dumps(args.calibration), load_dumps(args.test), load_dumps(args.ood)
    keep, normal = cal["labels"] >= 0, test["labels"] >= 0
    cal_e, cal_y = cal["errors"][keep], cal["labels"][keep]
    test_e, test_y = test["errors"][normal], test["labels"][normal]
    n_classes = cal_e.shape[1]
    figures = []
    for speed, rule, overrides in RULES:
        cfg = EngineConfig.from_calibration(engine, **PRESETS[speed], **overrides)
        if cal_e.shape[2] < len(cfg.timesteps) * cfg.tta:
            print(f"{speed:8s} {rule:17s} skipped: the dumps hold too few views", flush=True)
            continue
        calib = fit_calibration(replay(cal_e, cal, cfg), cal_y, n_classes)
        rt = replay(test_e, test, cfg)
        res = finish(rt, list(meta.classes), calib, 0.0, {})
        m = classification_metrics(test_y, res.pred, res.probs, res.p_correct, list(meta.classes))
        rood = replay(ood["errors"], ood, cfg)
        ro = finish(rood, list(meta.classes), calib, 0.0, {})
        row = {
            "speed": speed,
            "rule": rule,
            "overrides": overrides,
            **{k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "ece")},
            "selective_accuracy_p_correct_0.95": m["selective_accuracy_p_correct_0.95"],
            "coverage_p_correct_0.95": m["coverage_p_correct_0.95"],
            "unet_calls_per_cell": float(rt.calls.mean()),
            "n_ood": len(ro.pred),
            "ood_calls_per_cell": float(rood.calls.mean()),
            "anomaly_auroc": auroc(res.anomaly, ro.anomaly),
            "sensitivity_at_specificity_0.96": sensitivity_at_specificity(res.anomaly, ro.anomaly, 0.96),
        }
        figures.append(row)
        print(
            f"{speed:8s} {rule:17s} acc {row['accuracy']:.3f}  bal {row['balanced_accuracy']:.3f}  "
            f"ECE {row['ece']:.3f}  sel {row['selective_accuracy_p_correct_0.95']:.3f} "
            f"({row['coverage_p_correct_0.95']:.0%})  calls {row['unet_calls_per_cell']:.1f}  |  OOD AUROC "
            f"{row['anomaly_auroc']:.3f}  sens@spec0.96 {row['sensitivity_at_specificity_0.96']:.3f}",
            flush=True,
        )
    print(f"({len(cal_y)} calibration, {len(test_y)} normal test, {len(ood['labels'])} OOD cells)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
