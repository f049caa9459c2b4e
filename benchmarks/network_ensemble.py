"""Would two networks classify better than one? (offline, on full-grid error dumps)

The ``accurate`` preset adds a rotated view of every timestep to the default network's evidence.
A second, different network (the distilled ``pbc32-fast``) could add evidence that is less
correlated with the first network's than a second view of it is. This script joins the units of
two models' full-grid dumps (``benchmarks/full_grid_errors.py``, same cells, same views) into one
run — unit by unit, as if the second network were one more test-time view — replays the engine's
paired test on it exactly as the classifier would (``engine.replay_errors``), refits every
calibration constant on the calibration dumps, and prints, per arrangement: accuracy, balanced
accuracy, ECE, selective accuracy at P(correct) >= 0.95, UNet calls per cell (and their cost in
the first network's evaluations, the second costing ``--cost-b`` of one), and the anomaly AUROC
of the out-of-distribution cells.

Usage::

    python benchmarks/full_grid_errors.py --model pbc32 --int8 --views 2 --without-null \\
        --cache pbc_cache.npz --split cal --per-class 100000 --out runs/a_cal.npz  # and val, OOD
    python benchmarks/full_grid_errors.py --model pbc32-fast ... --out runs/b_cal.npz
    python benchmarks/network_ensemble.py --a runs/a_cal.npz runs/a_val.npz runs/a_ood.npz \\
        --b runs/b_cal.npz runs/b_val.npz runs/b_ood.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_features import load_dumps

#: name → units: (network, view) in the order the engine evaluates them
ARRANGEMENTS = {
    "A, 1 view": [("a", 0)],
    "A, 2 views (accurate)": [("a", 0), ("a", 1)],
    "B, 1 view": [("b", 0)],
    "B, 2 views": [("b", 0), ("b", 1)],
    "A + B, 1 view each": [("a", 0), ("b", 0)],
    "A 2 views + B 1 view": [("a", 0), ("b", 0), ("a", 1)],
    "A + B, 2 views each": [("a", 0), ("b", 0), ("a", 1), ("b", 1)],
}


def join(dumps: dict[str, dict], units: list[tuple[str, int]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Errors (N, C, len(units) * k) of the chosen (network, view) blocks, and each unit's network."""
    blocks = [dumps[net]["errors"][:, :, v * k : (v + 1) * k] for net, v in units]
    owner = np.concatenate([np.full(k, net == "b") for net, _ in units])
    return np.concatenate(blocks, axis=2), owner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--a", type=Path, nargs=3, required=True, help="first network: calibration, test, OOD dumps"
    )
    ap.add_argument("--b", type=Path, nargs=3, required=True, help="second network: the same cells")
    ap.add_argument("--model", default=None, help="model whose engine settings to replay (default: shipped)")
    ap.add_argument("--cost-b", type=float, default=0.4, help="one B evaluation in A evaluations")
    ap.add_argument("--only", nargs="*", default=None, help="arrangements to run (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from napari_cytodiffusion.classify.calibration import fit_calibration
    from napari_cytodiffusion.classify.classifier import finish
    from napari_cytodiffusion.classify.engine import EngineConfig, replay_errors
    from napari_cytodiffusion.evaluate.metrics import (
        auroc,
        classification_metrics,
        sensitivity_at_specificity,
    )
    from napari_cytodiffusion.model.folder import read_metadata
    from napari_cytodiffusion.model.registry import resolve_model

    meta = read_metadata(resolve_model(args.model))
    classes = list(meta.classes)
    engine = {"engine": dict((meta.calibration or {}).get("engine", {}))}
    sets = {}
    for net, paths in (("a", args.a), ("b", args.b)):
        sets[net] = {name: load_dumps([p]) for name, p in zip(("cal", "test", "ood"), paths, strict=True)}
    for name in ("cal", "test", "ood"):
        if not np.array_equal(sets["a"][name]["labels"], sets["b"][name]["labels"]):
            raise SystemExit(f"the {name} dumps of the two networks hold different cells")
    ref = sets["a"]["cal"]
    k = len(EngineConfig.from_calibration(engine).timesteps)
    figures = []
    for title, units in ARRANGEMENTS.items():
        if args.only and title not in args.only:
            continue
        runs = {}
        for name in ("cal", "test", "ood"):
            errors, owner = join({net: sets[net][name] for net in sets}, units, k)
            normal = sets["a"][name]["labels"] >= 0 if name != "ood" else slice(None)
            runs[name] = (errors[normal], sets["a"][name]["labels"][normal], owner)
        for mode, overrides in (("full grid", {"adaptive": False}), ("adaptive", {})):
            cfg = EngineConfig.from_calibration(engine, tta=len(units), **overrides)
            t = np.tile(ref["timesteps"][:k], len(units))
            w, s = np.tile(ref["weights"][:k], len(units)), np.tile(ref["scales"][:k], len(units))
            replayed = {name: replay_errors(e, t, w, s, cfg) for name, (e, _, _) in runs.items()}
            calib = fit_calibration(replayed["cal"], runs["cal"][1], len(classes))
            res = finish(replayed["test"], classes, calib, 0.0, {})
            ro = finish(replayed["ood"], classes, calib, 0.0, {})
            y = runs["test"][1]
            m = classification_metrics(y, res.pred, res.probs, res.p_correct, classes)
            done = np.isfinite(replayed["test"].errors)
            owner = runs["test"][2]
            calls_a = done[:, :, ~owner].sum(axis=(1, 2)).mean()
            calls_b = done[:, :, owner].sum(axis=(1, 2)).mean()
            row = {
                "arrangement": title,
                "mode": mode,
                **{key: m[key] for key in ("n", "accuracy", "balanced_accuracy", "ece")},
                "selective_accuracy_p_correct_0.95": m["selective_accuracy_p_correct_0.95"],
                "coverage_p_correct_0.95": m["coverage_p_correct_0.95"],
                "calls_a": float(calls_a),
                "calls_b": float(calls_b),
                "cost_in_a_calls": float(calls_a + args.cost_b * calls_b),
                "anomaly_auroc": auroc(res.anomaly, ro.anomaly),
                "sensitivity_at_specificity_0.96": sensitivity_at_specificity(res.anomaly, ro.anomaly, 0.96),
            }
            figures.append(row)
            print(
                f"{title:24s} {mode:9s} acc {row['accuracy']:.3f}  bal {row['balanced_accuracy']:.3f}  "
                f"ECE {row['ece']:.3f}  sel {row['selective_accuracy_p_correct_0.95']:.3f} "
                f"({row['coverage_p_correct_0.95']:.0%})  calls {calls_a:.1f} + {calls_b:.1f} "
                f"(cost {row['cost_in_a_calls']:.1f})  |  OOD AUROC {row['anomaly_auroc']:.3f}  "
                f"sens@spec0.96 {row['sensitivity_at_specificity_0.96']:.3f}",
                flush=True,
            )
    n = (sets["a"]["cal"]["labels"] >= 0).sum(), (sets["a"]["test"]["labels"] >= 0).sum()
    print(f"({n[0]} calibration, {n[1]} test, {len(sets['a']['ood']['labels'])} OOD cells)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
