"""Which error-profile features separate abnormal cells best? (offline, on full-grid error dumps)

Replays the classifier on error dumps of ``benchmarks/full_grid_errors.py`` — the full grid, and
the adaptive engine's rounds and paired test exactly as ``classify/engine.py`` runs them, which
is possible because a unit's errors do not depend on the order of evaluation — then fits the
anomaly profile on normal calibration cells and reports the AUROC of abnormal test cells
(label -1: a class the model never saw, or out-of-distribution crops) against normal test
cells, for each kind of gap feature (``classify/anomaly.py``: runner-up gap or every class).

Usage::

    python benchmarks/full_grid_errors.py --model runs/noery --cache pbc_cache.npz --split cal \\
        --per-class 25 --out runs/grid_noery_cal.npz          # likewise --split val
    python benchmarks/anomaly_features.py --calibration runs/grid_noery_cal.npz \\
        --test runs/grid_noery_val.npz --model runs/noery

Abnormal cells in a calibration dump (label -1) are left out of the fit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load_dumps(paths: list[Path]) -> dict[str, np.ndarray]:
    """Concatenate error dumps (the null class, last, is dropped)."""
    zs = [np.load(p) for p in paths]
    ref = zs[0]
    for z in zs[1:]:
        if not np.array_equal(z["timesteps"], ref["timesteps"]):
            raise SystemExit("error dumps with different timesteps cannot be combined")
    n_cls = len(ref["classes"])
    return {
        "errors": np.concatenate([z["errors"][:, :n_cls] for z in zs]),
        "labels": np.concatenate([z["labels"] for z in zs]),
        "timesteps": ref["timesteps"],
        "weights": ref["weights"],
        "scales": ref["scales"],
    }


def replay(errors: np.ndarray, d: dict[str, np.ndarray], config):
    """The engine's view of a run (:func:`~napari_cytodiffusion.classify.engine.replay_errors`)."""
    from napari_cytodiffusion.classify.engine import replay_errors

    try:
        return replay_errors(errors, d["timesteps"], d["weights"], d["scales"], config)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=Path, nargs="+", required=True, help="dumps of normal cells")
    ap.add_argument(
        "--test", type=Path, nargs="+", required=True, help="dumps with abnormal cells (label -1)"
    )
    ap.add_argument("--normal", type=Path, nargs="*", default=[], help="extra dumps of normal test cells")
    ap.add_argument("--model", type=Path, default=None, help="model folder whose engine settings to replay")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from napari_cytodiffusion.classify.anomaly import (
        GAP_KINDS,
        fit_profile,
        profile_features,
        profile_scores,
        unit_reference,
    )
    from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence
    from napari_cytodiffusion.evaluate.metrics import auroc, sensitivity_at_specificity
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.registry import resolve_model

    model = load_model(resolve_model(str(args.model) if args.model else None))
    engine = dict((model.metadata.calibration or {}).get("engine", {}))
    cal = load_dumps(args.calibration)
    test = load_dumps(args.test + args.normal)
    if not np.array_equal(cal["timesteps"], test["timesteps"]):
        raise SystemExit("calibration and test dumps have different timesteps")
    keep = cal["labels"] >= 0
    cal_e, cal_y = cal["errors"][keep], cal["labels"][keep]
    abnormal = test["labels"] < 0
    if not abnormal.any() or abnormal.all():
        raise SystemExit("the test dumps need both abnormal (label -1) and normal cells")
    n_classes = cal_e.shape[1]
    figures = []
    for mode in ("full", "adaptive"):
        cfg = EngineConfig.from_calibration({"engine": engine}, adaptive=mode == "adaptive")
        rc, rt = replay(cal_e, cal, cfg), replay(test["errors"], test, cfg)
        wc, _ = class_evidence(rc)
        wt, _ = class_evidence(rt)
        ref = unit_reference(rc.errors, cal_y, rc.unit_timesteps)
        normal = ~abnormal
        acc = float((wt[normal] == test["labels"][normal]).mean())
        for gaps in GAP_KINDS:
            fc = profile_features(rc.errors, rc.unit_timesteps, rc.unit_scales, wc, ref, gaps=gaps)
            fitted = fit_profile(fc, wc, n_classes)
            ft = profile_features(rt.errors, rt.unit_timesteps, rt.unit_scales, wt, ref, gaps=gaps)
            score = profile_scores(ft, wt, fitted)
            row = {
                "mode": mode,
                "gaps": gaps,
                "auroc": auroc(score[normal], score[abnormal]),
                "sensitivity_at_specificity_0.96": sensitivity_at_specificity(
                    score[normal], score[abnormal], 0.96
                ),
                "normal_accuracy": acc,
                "calls_per_cell": float(rt.calls[normal].mean()),
                "n_abnormal": int(abnormal.sum()),
                "n_normal": int(normal.sum()),
                "n_calibration": int(len(cal_y)),
            }
            figures.append(row)
            print(
                f"{mode:8s} gaps={gaps:9s} AUROC {row['auroc']:.3f}  sens@spec0.96 "
                f"{row['sensitivity_at_specificity_0.96']:.2f}  (abnormal {row['n_abnormal']}, normal "
                f"{row['n_normal']}, accuracy {acc:.3f}, {row['calls_per_cell']:.1f} calls/cell)",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
