"""How much of a cell's anomaly score and flag is the cell, and how much its noise draw?

Replays the adaptive classifier (``classify.engine.replay_errors``, ``balanced`` preset) on
full-grid error dumps (``benchmarks/full_grid_errors.py``, with the null label) of the calibration
cells, of the same val cells under two noise seeds (``--noise-seed 0`` and ``1``) and of
out-of-distribution cells; fits the anomaly profile on the calibration dump as
``fit_calibration`` does, and prints, per variant:

- ``corr``: correlation of the val cells' anomaly scores between the two draws;
- ``same``: val cells whose anomaly flag is the same under both draws;
- ``rate``: val cells flagged anomalous (mean of the draws; the threshold is the calibration
  cells' 96th percentile);
- ``both``: of the val cells flagged anomalous under either draw, the share flagged under both;
- ``ood``, ``sens96``: AUROC of the out-of-distribution cells against the val cells (first draw)
  and sensitivity at specificity 0.96;
- ``left_out`` (mean over classes) and ``min``: each class in turn taken out of the
  classifier's label set (its column removed from the errors, its calibration cells left out of
  the fit), its val cells against the other val cells. A proxy for a class the network never
  saw (it did learn this one): does the variant still see "explained by the wrong class"?

Variants: the profile's band features (how well the winning class explains the cell) with the
gap features (distances to every other class, ``gaps="classes"`` in
:mod:`napari_cytodiffusion.classify.anomaly`) weighted by ``lambda`` in the squared distance
(1 = every-class gaps, 0 = bands only); the null label's gap instead (``gaps="null"``: the
engine evaluates the null label at every unit, one call per unit); and ``min_units_before_drop``
(more units before the paired test may drop a class: steadier gaps, more calls). The shipped score also gets ``flag_same`` / ``flag_both``: the whole flag
(P(correct) below its limit, or anomalous), as ``finish`` computes it; and ``holds``: for val
cells flagged anomalous under the first draw, by how far the score exceeds the threshold, the
share also flagged under the second.

Usage::

    python benchmarks/anomaly_steadiness.py --cal grid_cal.npz --val grid_val_s0.npz grid_val_s1.npz \
        --ood grid_ood.npz [--min-units 2 6] [--lambdas 0 0.25 0.5 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_cytodiffusion.classify.anomaly import BANDS, fit_profile, profile_features, unit_reference
from napari_cytodiffusion.classify.calibration import fit_calibration
from napari_cytodiffusion.classify.classifier import PRESETS, finish
from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence, replay_errors
from napari_cytodiffusion.evaluate.metrics import auroc, sensitivity_at_specificity

N_BANDS = len(BANDS) - 1


def load(path: Path) -> dict:
    z = np.load(path)
    return {k: z[k] for k in z.files}


def load_dump(path: Path) -> dict:
    """A dump with its null label's errors (its last class, where it has one) split off as ``null``."""
    d = load(path)
    c = len(d["classes"])
    if d["errors"].shape[1] == c + 1:
        d["null"], d["errors"] = d["errors"][:, c], d["errors"][:, :c]
    return d


def replay(dump: dict, engine: dict):
    cfg = EngineConfig(**{**PRESETS["balanced"], **engine})
    null = dump.get("null") if cfg.null else None
    return replay_errors(dump["errors"], dump["timesteps"], dump["weights"], dump["scales"], cfg, null)


def without_class(dump: dict, c: int) -> dict:
    """The dump as a classifier that lacks class ``c`` sees it (its cells get label -1)."""
    keep = [j for j in range(dump["errors"].shape[1]) if j != c]
    labels = np.where(dump["labels"] == c, -1, dump["labels"] - (dump["labels"] > c))
    return {**dump, "errors": dump["errors"][:, keep], "labels": labels, "classes": dump["classes"][keep]}


def subset(dump: dict, rows: np.ndarray) -> dict:
    per_cell = ("errors", "labels", "cell_ids", "null")
    return {k: (v[rows] if k in per_cell else v) for k, v in dump.items()}


def _d2(features: np.ndarray, winner: np.ndarray, fitted: dict, dims: list[int]) -> np.ndarray:
    means, covs = np.asarray(fitted["means"]), np.asarray(fitted["covs"])
    out = np.full(len(features), np.nan)
    for c in range(len(means)):
        rows = winner == c
        if rows.any():
            inv = np.linalg.inv(covs[c][np.ix_(dims, dims)])
            x = np.nan_to_num(features[rows][:, dims] - means[c][dims])
            out[rows] = np.einsum("ij,jk,ik->i", x, inv, x)
    return out


class Profile:
    """The anomaly profile fitted on a calibration dump; scores with the gap part weighted."""

    def __init__(self, cal: dict, engine: dict, gaps: str = "classes"):
        self.engine, self.gaps = {**engine, "null": gaps == "null"}, gaps
        run = replay(cal, self.engine)
        self.reference = unit_reference(run.errors, cal["labels"], run.unit_timesteps)
        feats, winner = self.features(run)
        self.fitted = fit_profile(feats, winner, cal["errors"].shape[1])
        self.cal_parts = self.parts(feats, winner)

    def features(self, run):
        winner, _ = class_evidence(run)
        feats = profile_features(
            run.errors,
            run.unit_timesteps,
            run.unit_scales,
            winner,
            self.reference,
            self.gaps,
            run.null_errors,
        )
        return feats, winner

    def parts(self, feats, winner):
        bands = _d2(feats, winner, self.fitted, list(range(N_BANDS)))
        return bands, _d2(feats, winner, self.fitted, list(range(feats.shape[1]))) - bands, feats.shape[1]

    @staticmethod
    def combine(parts, lam: float) -> np.ndarray:
        bands, gaps, d = parts
        return np.sqrt((bands + lam * gaps) / (N_BANDS + lam * (d - N_BANDS)))

    def scores(self, dump: dict, lam: float) -> np.ndarray:
        return self.combine(self.parts(*self.features(replay(dump, self.engine))), lam)

    def threshold(self, lam: float, specificity: float = 0.96) -> float:
        return float(np.quantile(self.combine(self.cal_parts, lam), specificity))


def anomaly_figures(cal, vals, ood, engine, lam: float, gaps: str = "classes") -> dict:
    prof = Profile(cal, engine, gaps)
    thr = prof.threshold(lam)
    s0, s1 = (prof.scores(v, lam) for v in vals)
    f0, f1 = s0 > thr, s1 > thr
    out = {
        "corr": float(np.corrcoef(s0, s1)[0, 1]),
        "same": float((f0 == f1).mean()),
        "rate": float((f0.mean() + f1.mean()) / 2),
        "both": float((f0 & f1).sum() / max(1, (f0 | f1).sum())),
    }
    if ood is not None:
        so = prof.scores(ood, lam)
        out["ood"] = auroc(s0, so)
        out["sens96"] = sensitivity_at_specificity(s0, so)
    left = []
    for c in range(len(cal["classes"])):
        cc, vc = without_class(cal, c), without_class(vals[0], c)
        cc = subset(cc, cc["labels"] >= 0)
        sv = Profile(cc, engine, gaps).scores(vc, lam)
        left.append(auroc(sv[vc["labels"] >= 0], sv[vc["labels"] < 0]))
    out["left_out"], out["min"] = float(np.mean(left)), float(np.min(left))
    out["calls"] = float(replay(vals[0], prof.engine).calls.mean())
    return out


def shipped_flags(cal, vals, engine, null: bool = False) -> dict:
    """The whole flag of a calibration as shipped (``fit_calibration`` + ``finish``) under both draws;
    with ``null``, of one whose profile uses the null label's gap."""
    engine = {**engine, "null": null}
    classes = [str(c) for c in cal["classes"]]
    calib = fit_calibration(replay(cal, engine), cal["labels"], len(classes))
    a, b = (finish(replay(v, engine), classes, calib, 0.0, {}) for v in vals)
    thr = calib["anomaly"]["threshold"]
    either = a.flagged | b.flagged
    holds = {}
    over = a.anomaly - thr
    for lo, hi in ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, np.inf)):
        rows = (over > lo) & (over <= hi)
        if rows.any():
            holds[f"{lo:g}-{hi:g}"] = {
                "cells": int(rows.sum()),
                "held": float((b.anomaly[rows] > thr).mean()),
            }
    return {
        "accuracy": float(
            np.mean([(r.pred == v["labels"]).mean() for r, v in zip((a, b), vals, strict=True)])
        ),
        "flag_same": float((a.flagged == b.flagged).mean()),
        "flag_both": float((a.flagged & b.flagged).sum() / max(1, either.sum())),
        "holds_by_excess": holds,
    }


def engine_of(dump: dict) -> dict:
    """The engine settings a dump was made with (timesteps, weights, scales, paired-test threshold)."""
    return {
        "timesteps": [int(t) for t in dump["timesteps"]],
        "weights": [float(w) for w in dump["weights"]],
        "scales": [float(s) for s in dump["scales"]],
        "drop_z": float(dump["drop_z"]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cal", type=Path, required=True, help="full-grid dump of the calibration cells")
    ap.add_argument(
        "--val", type=Path, nargs=2, required=True, help="dumps of the same val cells, two noise seeds"
    )
    ap.add_argument("--ood", type=Path, default=None, help="dump of out-of-distribution cells")
    ap.add_argument("--min-units", type=int, nargs="*", default=[2], help="min_units_before_drop values")
    ap.add_argument(
        "--lambdas", type=float, nargs="*", default=[0.0, 0.25, 0.5, 1.0], help="weights of the gap part"
    )
    ap.add_argument(
        "--null", action="store_true", help="also the null label's gap (dumps made with the null label)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    cal, vals = load_dump(args.cal), [load_dump(p) for p in args.val]
    if not np.array_equal(vals[0]["cell_ids"], vals[1]["cell_ids"]):
        raise SystemExit("the two --val dumps hold other cells")
    if vals[0].get("noise_seed") is not None and vals[0]["noise_seed"] == vals[1].get("noise_seed"):
        raise SystemExit("the two --val dumps are the same draw (same --noise-seed)")
    ood = load_dump(args.ood) if args.ood else None
    if args.null and any("null" not in d for d in [cal, *vals] + ([ood] if ood else [])):
        raise SystemExit(
            "--null needs dumps with the null label (full_grid_errors.py without --without-null)"
        )
    engine = engine_of(cal)
    rows: dict = {"shipped": shipped_flags(cal, vals, engine)}
    print("shipped score, whole flag:", json.dumps(rows["shipped"]), flush=True)
    if args.null:
        rows["null_shipped"] = shipped_flags(cal, vals, engine, null=True)
        print("null-gap score, whole flag:", json.dumps(rows["null_shipped"]), flush=True)
    for mu in args.min_units:
        for lam in args.lambdas:
            key = f"lambda {lam:g}, min units {mu}"
            rows[key] = anomaly_figures(cal, vals, ood, {**engine, "min_units_before_drop": mu}, lam)
            print(key, " ".join(f"{k} {v:.3f}" for k, v in rows[key].items()), flush=True)
        if args.null:
            key = f"null gap, min units {mu}"
            rows[key] = anomaly_figures(cal, vals, ood, {**engine, "min_units_before_drop": mu}, 1.0, "null")
            print(key, " ".join(f"{k} {v:.3f}" for k, v in rows[key].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
