"""Which anomaly profile finds abnormal cells, a class the network never learnt above all? (offline)

The classifier issue's measure: train a variant without one class, calibrate it on its own
hold-out cells, and score that class's val cells against the normal val cells (AUROC; the
goal is 0.99), for every kind of gap feature of the anomaly profile (``classify/anomaly.py``:
the runner-up gap, every class's gap, and when every dump holds the null label its gap, alone
and beside every class's gap, ``classes+null``, not a shipped kind), on the full grid and the
adaptive engine. Out-of-distribution dumps (``--ood``, e.g. MP-IDB infected red cells) are
scored against the same normal cells, each set on its own.

Everything is replayed on error dumps of ``benchmarks/full_grid_errors.py``: the full grid,
and the adaptive engine's rounds and paired test exactly as ``classify/engine.py`` runs them
(``classify.engine.replay_errors``; a unit's errors do not depend on the order of evaluation).

A fresh variant has no engine settings yet. They are then fitted on the calibration dump as
``scripts/calibrate_default_model.py`` fits them: the 24 most informative timesteps of the grid
with their weights and scales (``calibration.timestep_statistics``), and the cheapest
``drop_z`` whose calibration accuracy is within 0.5 points of the full grid's. Every dump's
units are put in the engine's order; each cell and unit has its own noise, so the replay is a
run of that engine with the dump's noise. A model that has an engine keeps it (unless
``--fit-engine``).

Usage::

    python scripts/train_default_model.py train --cache pbc_cache.npz --out runs/noery \\
        --exclude-class erythroblast --steps 10500 --batch-size 64 --lr 4e-4 --min-lr 1e-5
    for s in cal val; do python benchmarks/full_grid_errors.py --model runs/noery --int8 \\
        --cache pbc_cache.npz --split $s --per-class 100000 --out runs/noery_$s.npz; done
    python benchmarks/full_grid_errors.py --model runs/noery --int8 --cache mpidb.npz \\
        --split images --per-class 100000 --out runs/noery_mpidb.npz
    python benchmarks/anomaly_features.py --model runs/noery --calibration runs/noery_cal.npz \\
        --test runs/noery_val.npz --ood runs/noery_mpidb.npz --out runs/noery_anomaly.json

Cells of a class the model lacks carry label -1 in a dump (``full_grid_errors.py``); they are
left out of the calibration fit and are the abnormal cells of ``--test``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: drop_z candidates, cheapest first (as ``scripts/calibrate_default_model.py``)
DROP_Z = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def load_dumps(paths: list[Path]) -> dict[str, np.ndarray]:
    """Concatenate error dumps: class errors (N, C, U) and, when every dump has it, the null label's (N, U)."""
    zs = [np.load(p) for p in paths]
    ref = zs[0]
    for z in zs[1:]:
        if not np.array_equal(z["timesteps"], ref["timesteps"]):
            raise SystemExit("error dumps with different timesteps cannot be combined")
    n_cls = len(ref["classes"])
    with_null = all(z["errors"].shape[1] == n_cls + 1 for z in zs)
    return {
        "errors": np.concatenate([z["errors"][:, :n_cls] for z in zs]),
        "null": np.concatenate([z["errors"][:, n_cls] for z in zs]) if with_null else None,
        "labels": np.concatenate([z["labels"] for z in zs]),
        "timesteps": ref["timesteps"],
        "weights": ref["weights"],
        "scales": ref["scales"],
    }


def replay(errors: np.ndarray, d: dict[str, np.ndarray], config, null_errors: np.ndarray | None = None):
    """The engine's view of a run (:func:`~napari_cytodiffusion.classify.engine.replay_errors`)."""
    from napari_cytodiffusion.classify.engine import replay_errors

    try:
        return replay_errors(
            errors, d["timesteps"], d["weights"], d["scales"], config, null_errors=null_errors
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def subset(d: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The dump's cells where ``keep``."""
    return {**d, "errors": d["errors"][keep], "labels": d["labels"][keep],
            "null": None if d["null"] is None else d["null"][keep]}  # fmt: skip


def in_order(d: dict[str, np.ndarray], engine: dict) -> dict[str, np.ndarray]:
    """The dump's units at the engine's timesteps, in its order, with its weights and scales (one view)."""
    where = {int(t): i for i, t in enumerate(d["timesteps"])}
    missing = [t for t in engine["timesteps"] if int(t) not in where]
    if missing:
        raise SystemExit(f"the dumps lack timesteps {missing} of the engine")
    idx = [where[int(t)] for t in engine["timesteps"]]
    k = len(idx)
    return {
        **d,
        "errors": d["errors"][:, :, idx],
        "null": None if d["null"] is None else d["null"][:, idx],
        "timesteps": np.asarray(engine["timesteps"]),
        "weights": np.asarray(engine.get("weights") or np.ones(k), float),
        "scales": np.asarray(engine.get("scales") or np.ones(k), float),
    }


def fit_engine(cal: dict[str, np.ndarray], keep: int = 24) -> dict:
    """Timesteps, weights, scales and drop_z fitted on a full-grid calibration dump."""
    from napari_cytodiffusion.classify.calibration import timestep_statistics
    from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence

    stats = timestep_statistics(cal["errors"], cal["labels"], [int(t) for t in cal["timesteps"]], keep=keep)
    engine = {
        "timesteps": [int(t) for t in stats["timesteps"]],
        "weights": [float(v) for v in stats["weights"]],
        "scales": [float(v) for v in stats["scales"]],
    }
    d = in_order(cal, engine)
    full = replay(d["errors"], d, EngineConfig(**engine, adaptive=False))
    acc_full = float((class_evidence(full)[0] == cal["labels"]).mean())
    for dz in DROP_Z:  # the last one when none is close enough
        r = replay(d["errors"], d, EngineConfig(**engine, adaptive=True, drop_z=dz))
        if (class_evidence(r)[0] == cal["labels"]).mean() >= acc_full - 0.005:
            break
    return {**engine, "drop_z": dz}


def _features(run, winner: np.ndarray, reference: dict, gaps: str) -> np.ndarray:
    """The profile's features; ``classes+null`` (not a shipped kind): every class's gap and the null label's."""
    from napari_cytodiffusion.classify.anomaly import profile_features

    if gaps == "classes+null":
        both = [_features(run, winner, reference, g) for g in ("classes", "null")]
        return np.concatenate([both[0], both[1][:, -1:]], axis=1)
    return profile_features(
        run.errors, run.unit_timesteps, run.unit_scales, winner, reference, gaps=gaps, null_errors=run.null_errors
    )  # fmt: skip


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def measure(engine: dict, cal, test, oods: dict[str, dict], gap_kinds) -> list[dict]:
    """Accuracy of the normal test cells and AUROC of the abnormal ones, per mode and gap kind."""
    from napari_cytodiffusion.classify.anomaly import (
        fit_profile,
        profile_scores,
        unit_reference,
    )
    from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence
    from napari_cytodiffusion.evaluate.metrics import auroc, sensitivity_at_specificity

    cal, test = in_order(cal, engine), in_order(test, engine)
    oods = {k: in_order(v, engine) for k, v in oods.items()}
    sets = {"cal": cal, "test": test, **oods}
    normal = test["labels"] >= 0
    with_null = all(d["null"] is not None for d in sets.values())  # the null label only if every dump has it
    rows = []
    for mode in ("full", "adaptive"):
        cfg = EngineConfig(**engine, adaptive=mode == "adaptive", null=with_null)
        runs = {k: replay(d["errors"], d, cfg, d["null"] if with_null else None) for k, d in sets.items()}
        winners = {k: class_evidence(r)[0] for k, r in runs.items()}
        ref = unit_reference(runs["cal"].errors, cal["labels"], runs["cal"].unit_timesteps)
        y = test["labels"][normal]
        row0 = {
            "mode": mode,
            "normal_accuracy": float((winners["test"][normal] == y).mean()),
            "normal_balanced_accuracy": balanced_accuracy(y, winners["test"][normal]),
            "calls_per_cell": float(runs["test"].calls[normal].mean()),
            "n_normal": int(normal.sum()),
            "n_left_out": int((~normal).sum()),
            "n_calibration": len(cal["labels"]),
        }
        n_classes = cal["errors"].shape[1]
        for gaps in gap_kinds:
            feats = {k: _features(r, winners[k], ref, gaps) for k, r in runs.items()}
            fitted = fit_profile(feats["cal"], winners["cal"], n_classes)
            scores = {k: profile_scores(f, winners[k], fitted) for k, f in feats.items() if k != "cal"}
            neg = scores["test"][normal]
            row = {**row0, "gaps": gaps}
            abnormal = {"left_out_class": scores["test"][~normal]} if (~normal).any() else {}
            abnormal.update({k: scores[k] for k in oods})
            for name, pos in abnormal.items():
                row[name] = {
                    "n": len(pos),
                    "anomaly_auroc": auroc(neg, pos),
                    "sensitivity_at_specificity_0.96": sensitivity_at_specificity(neg, pos, 0.96),
                }
            rows.append(row)
            figures = "  ".join(
                f"{k}: AUROC {v['anomaly_auroc']:.3f} sens {v['sensitivity_at_specificity_0.96']:.2f}"
                for k, v in row.items()
                if isinstance(v, dict)
            )
            print(
                f"{mode:8s} gaps={gaps:9s} {figures}  (normal: balanced accuracy "
                f"{row0['normal_balanced_accuracy']:.3f}, {row0['calls_per_cell']:.1f} calls/cell)",
                flush=True,
            )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=Path, nargs="+", required=True, help="dumps of hold-out cells")
    ap.add_argument(
        "--test", type=Path, nargs="+", required=True, help="dumps of val cells (a class the model lacks: -1)"
    )
    ap.add_argument("--normal", type=Path, nargs="*", default=[], help="extra dumps of normal test cells")
    ap.add_argument(
        "--ood", type=Path, nargs="*", default=[], help="dumps of out-of-distribution cells, each a set"
    )
    ap.add_argument("--model", default=None, help="model folder or name whose engine settings to replay")
    ap.add_argument(
        "--fit-engine",
        action="store_true",
        help="fit the engine on the calibration dump even if the model has one",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from napari_cytodiffusion.classify.anomaly import GAP_KINDS
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.registry import resolve_model

    model = load_model(resolve_model(args.model))
    cal = load_dumps(args.calibration)
    cal = subset(cal, cal["labels"] >= 0)
    test = load_dumps(args.test + args.normal)
    oods = {p.stem: load_dumps([p]) for p in args.ood}
    if (test["labels"] >= 0).all() and not oods:
        raise SystemExit(
            "nothing abnormal to score: --test has no cells of a class the model lacks, and no --ood"
        )
    with_null = all(d["null"] is not None for d in (cal, test, *oods.values()))
    gap_kinds = [*GAP_KINDS, "classes+null"] if with_null else [g for g in GAP_KINDS if g != "null"]
    engine = dict((model.metadata.calibration or {}).get("engine", {}))
    source = "the model's"
    if args.fit_engine or not engine.get("timesteps"):
        engine, source = fit_engine(cal), "fitted on the calibration dump"
    engine = {k: engine[k] for k in ("timesteps", "weights", "scales", "drop_z") if k in engine}
    print(
        f"engine ({source}): {len(engine['timesteps'])} timesteps, drop_z {engine.get('drop_z')}", flush=True
    )
    rows = measure(engine, cal, test, oods, gap_kinds)
    if args.out:
        summary = {"model": model.short_id(), "engine": engine, "engine_source": source, "figures": rows}
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
