"""How many UNet calls does a class-dropping rule need to keep the full grid's answer? (offline)

Replays adaptive classification on full-grid error dumps of ``benchmarks/full_grid_errors.py``
(a unit's errors do not depend on the order of evaluation, so every rule sees exactly the errors
it would have computed) and prints, per rule, accuracy, agreement with the full grid and UNet
calls per cell. The rules vary the engine's paired test (``classify/engine.py``): its threshold
``z``, the floor on the variance of the paired differences (in units of each timestep's spread;
the engine uses 1), and a futility form that also counts the units still to come (a class is
dropped when it could not catch up even if the remaining units went its way as often as so far).
With ``--views`` > 1 dumps, it also prints the full grid and the engine's rule at 1..V views.

Usage::

    python benchmarks/full_grid_errors.py --int8 --cache pbc_cache.npz --split cal --per-class 60 \\
        --out runs/grid_cal.npz
    python benchmarks/drop_policies.py runs/grid_cal.npz [--views 4]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_features import load_dumps


def drop(err, active, w, s, z: float, floor: float, futility: bool, total: int) -> None:
    """One paired test after a round (in place on ``active``); the engine's with floor=1."""
    from napari_cytodiffusion.classify.engine import weighted_score

    n, c, u = err.shape
    best = np.argmin(np.where(active, weighted_score(err, w), np.inf), axis=1)
    diff = (err - err[np.arange(n), best][:, None, :]) / s[None, None, :]
    masked = np.where(active[:, :, None], diff, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(masked, axis=2)
        var = np.nanvar(masked, axis=2, ddof=1) if u > 1 else np.full((n, c), floor)
    stat = mean / np.sqrt(np.maximum(np.nan_to_num(var, nan=floor), floor) / u)
    if futility and u < total:
        stat = stat * np.sqrt(total / (total - u))
    out = active & (stat > z)
    out[np.arange(n), best] = False
    active &= ~out


def replay(errors, w, s, z: float, floor: float = 1.0, futility: bool = False, per_round: int = 2):
    """Winner and calls per cell of a rule."""
    from napari_cytodiffusion.classify.engine import ErrorResult, class_evidence

    n, c, total = errors.shape
    seen = np.full(errors.shape, np.nan)
    active = np.ones((n, c), bool)
    calls = np.zeros(n)
    done = 0
    while done < total:
        units = list(range(done, min(total, done + per_round)))
        seen[:, :, units] = np.where(active[:, :, None], errors[:, :, units], np.nan)
        calls += active.sum(axis=1) * len(units)
        done = units[-1] + 1
        if 2 <= done < total:
            drop(seen[:, :, :done], active, w[:done], s[:done], z, floor, futility, total)
    winner, _ = class_evidence(ErrorResult(seen, active, calls, np.arange(total), w, s))
    return winner, calls


def main(argv: list[str] | None = None) -> int:
    from napari_cytodiffusion.classify.engine import weighted_score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dumps", type=Path, nargs="+")
    ap.add_argument("--views", type=int, default=1, help="views in the dumps (full_grid_errors.py --views)")
    args = ap.parse_args(argv)
    d = load_dumps(args.dumps)
    e, y = d["errors"], d["labels"]
    w, s = np.asarray(d["weights"], float), np.asarray(d["scales"], float)
    keep = y >= 0
    e, y = e[keep], y[keep]
    z0 = float(np.load(args.dumps[0]).get("drop_z", 1.5))
    per_view = e.shape[2] // args.views
    for v in range(1, args.views + 1):
        k = per_view * v
        full = np.argmin(weighted_score(e[:, :, :k], w[:k]), axis=1)
        print(f"{v} view(s), {k} units: full grid accuracy {np.mean(full == y):.4f}, {e.shape[1] * k} calls")
        rules = [(z0, 1.0, False)]
        if v == 1:
            rules += [(z, f, fut) for z in (1.5, 2.0, 2.5) for f in (1.0, 0.3, 0.1) for fut in (False, True)]
        for z, f, fut in dict.fromkeys(rules):
            win, calls = replay(e[:, :, :k], w[:k], s[:k], z, f, fut)
            print(
                f"  z {z:.1f} floor {f:.1f}{' futility' if fut else ''}: accuracy {np.mean(win == y):.4f}, "
                f"agreement with the full grid {np.mean(win == full):.4f}, {calls.mean():.1f} calls per cell"
            )
    print(f"{len(y)} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
