"""How much of a cell's anomaly score and flag is the cell, and how much its noise draw?

Replays the adaptive classifier (``classify.engine.replay_errors``) on full-grid error dumps
(``benchmarks/full_grid_errors.py --without-null``) of the calibration cells, of the same val
cells under two noise seeds (``--noise-seed 0`` and ``1``), and optionally of out-of-distribution
cells; fits each variant's calibration on the calibration dump (as ``fit_calibration`` does) and
prints, per variant of the anomaly profile:

- ``corr``: correlation of the val cells' anomaly scores between the two draws;
- ``anom_same`` / ``flag_same``: cells whose anomaly flag / whole flag is the same under both;
- ``flag_both``: of the cells flagged under either draw, the share flagged under both;
- ``flagged``, ``wrong_flagged``: share of cells flagged, of wrong calls flagged (mean of draws);
- ``ood_auroc``, ``ood_sens96``: out-of-distribution cells against val cells (first draw).

Usage::

    python benchmarks/anomaly_steadiness.py --cal grid_cal.npz --val grid_val_s0.npz grid_val_s1.npz \
        [--ood grid_ood.npz]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_cytodiffusion.classify.calibration import fit_calibration
from napari_cytodiffusion.classify.classifier import PRESETS, finish
from napari_cytodiffusion.classify.engine import EngineConfig, replay_errors
from napari_cytodiffusion.evaluate.metrics import auroc, sensitivity_at_specificity

#: anomaly profile variants: name → fit_calibration keyword arguments
VARIANTS: dict[str, dict] = {
    "classes": {"gaps": "classes"},
    "runner_up": {"gaps": "runner_up"},
}
for _cap in (1.0, 2.0, 3.0):
    VARIANTS[f"classes cap {_cap:g}"] = {"gaps": "classes", "gap_cap": _cap}


def load(path: Path) -> dict:
    z = np.load(path)
    return {k: z[k] for k in z.files}


def replay(dump: dict, engine: dict):
    cfg = EngineConfig(**{**engine, **PRESETS["balanced"]})
    return replay_errors(dump["errors"], dump["timesteps"], dump["weights"], dump["scales"], cfg)


def study(cal: dict, vals: list[dict], ood: dict | None, engine: dict, fit_kwargs: dict) -> dict:
    classes = [str(c) for c in cal["classes"]]
    rc = replay(cal, engine)
    calib = fit_calibration(rc, cal["labels"], len(classes), **fit_kwargs)
    runs = [finish(replay(v, engine), classes, calib, 0.0, {}) for v in vals]
    a, b = runs[0], runs[-1]
    thr = calib["anomaly"]["threshold"]
    anom = [r.anomaly > thr for r in (a, b)]
    either = a.flagged | b.flagged
    out = {
        "accuracy": float(np.mean([(r.pred == v["labels"]).mean() for r, v in zip(runs, vals, strict=True)])),
        "calls": float(np.mean([r.unet_calls.mean() for r in runs])),
        "corr": float(np.corrcoef(a.anomaly, b.anomaly)[0, 1]),
        "anom_same": float((anom[0] == anom[1]).mean()),
        "flag_same": float((a.flagged == b.flagged).mean()),
        "flag_both": float((a.flagged & b.flagged).sum() / max(1, either.sum())),
        "flagged": float(np.mean([r.flagged.mean() for r in runs])),
        "wrong_flagged": float(
            np.mean([r.flagged[r.pred != v["labels"]].mean() for r, v in zip(runs, vals, strict=True)])
        ),
    }
    if ood is not None:
        ro = finish(replay(ood, engine), classes, calib, 0.0, {})
        out["ood_auroc"] = auroc(a.anomaly, ro.anomaly)
        out["ood_sens96"] = sensitivity_at_specificity(a.anomaly, ro.anomaly)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cal", type=Path, required=True, help="full-grid dump of the calibration cells")
    ap.add_argument(
        "--val", type=Path, nargs=2, required=True, help="dumps of the same cells, two noise seeds"
    )
    ap.add_argument("--ood", type=Path, default=None, help="dump of out-of-distribution cells")
    ap.add_argument("--min-units", type=int, nargs="*", default=[2], help="min_units_before_drop values")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    cal, vals = load(args.cal), [load(p) for p in args.val]
    if not np.array_equal(vals[0]["cell_ids"], vals[1]["cell_ids"]):
        raise SystemExit("the two --val dumps hold other cells")
    ood = load(args.ood) if args.ood else None
    engine = {
        "timesteps": [int(t) for t in cal["timesteps"]],
        "weights": [float(w) for w in cal["weights"]],
        "scales": [float(s) for s in cal["scales"]],
        "drop_z": float(cal["drop_z"]),
    }
    rows = {}
    for mu in args.min_units:
        for name in args.variants:
            key = f"{name}, min units {mu}"
            rows[key] = study(cal, vals, ood, {**engine, "min_units_before_drop": mu}, VARIANTS[name])
            print(key, " ".join(f"{k} {v:.3f}" for k, v in rows[key].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
