"""Antithetic noise: does scoring each timestep under its noise *and* minus it help the classifier?

A unit's error ``|eps - eps_c(sqrt(a) x0 + sqrt(1 - a) eps)|^2`` has a part odd in the drawn noise, so
the class gap under ``eps`` and under ``-eps`` are negatively correlated, and their mean is less noisy
than the mean of two independent draws. Whether that buys accuracy is measured here on full-grid dumps
of ``radial_errors.py`` (any ``--space``; the rings are summed back to the engine's error):

    python benchmarks/radial_errors.py dump --cache pbc_cache.npz --split cal --int8 --out runs/plus_cal.npz
    python benchmarks/radial_errors.py dump ... --split cal --negate-noise --out runs/minus_cal.npz
    (the same for --split val; and, for the noise variance, a second seed on a few cells:
     dump --split cal --limit 200 --seed 1 [--negate-noise] --out runs/plus2_cal.npz / minus2_cal.npz)
    python benchmarks/antithetic_noise.py --cal runs/plus_cal.npz runs/minus_cal.npz \\
        --test runs/plus_val.npz runs/minus_val.npz [--second-seed runs/plus2_cal.npz runs/minus2_cal.npz]

Printed: the full grid and the engine's adaptive replay (timestep weights and scales refitted on the
calibration dumps each time) under +noise alone, -noise alone, and the antithetic pair (each unit the
mean error of both, two UNet calls); with ``--second-seed``, per timestep, the noise variance of the
class gap of an antithetic pair against that of two independent draws.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def engine_errors(path: Path) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """(N, C, U) errors (rings summed), labels, timesteps and classes of a ``radial_errors`` dump."""
    d = np.load(path)
    errors = d["ring_sums"].sum(axis=3) / float(d["ring_pixels"].sum())
    return errors, d["labels"], [int(t) for t in d["timesteps"]], [str(c) for c in d["classes"]]


def replay(cal: np.ndarray, y_cal, test: np.ndarray, y_test, timesteps, classes, cost: int, zs) -> list[dict]:
    from napari_cytodiffusion.classify.calibration import timestep_statistics
    from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence, replay_errors
    from napari_cytodiffusion.evaluate.metrics import classification_metrics

    stats = timestep_statistics(cal, y_cal, timesteps)
    order = [timesteps.index(t) for t in stats["timesteps"]]
    rows = []
    for adaptive, z in [(False, None)] + [(True, z) for z in zs]:
        cfg = EngineConfig(
            timesteps=stats["timesteps"], weights=stats["weights"], scales=stats["scales"],
            adaptive=adaptive, drop_z=z if z is not None else 2.5,
        )  # fmt: skip
        row = {"run": f"adaptive z {z:g}" if adaptive else "full grid"}
        for name, e, y in (("calibration", cal, y_cal), ("test", test, y_test)):
            r = replay_errors(e[:, :, order], cfg.timesteps, cfg.weights, cfg.scales, cfg)
            pred, _ = class_evidence(r)
            m = classification_metrics(y, pred, np.eye(len(classes))[pred], np.ones(len(pred)), classes)
            row[name] = (m["accuracy"], m["balanced_accuracy"], float(r.calls.mean()) * cost)
        rows.append(row)
    return rows


def gap_noise(plus, minus, plus2, minus2, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per timestep: noise variance of the class gap (wrong - true) of an antithetic pair's mean and
    of the mean of two independent draws, from two seeds of the same cells (within-cell variances)."""
    n, c, _ = plus.shape
    wrong = np.ones((n, c), bool)
    wrong[np.arange(n), labels] = False

    def gaps(e):
        return (e - e[np.arange(n), labels][:, None, :])[wrong]  # (M, U)

    g1, m1, g2, m2 = gaps(plus), gaps(minus), gaps(plus2), gaps(minus2)
    one_draw = ((g1 - g2) ** 2 + (m1 - m2) ** 2).mean(axis=0) / 4  # variance of one unit's gap
    pair = (((g1 + m1) / 2 - (g2 + m2) / 2) ** 2).mean(axis=0) / 2  # variance of a pair's mean
    return pair, one_draw / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cal", type=Path, nargs=2, required=True, metavar=("PLUS", "MINUS"))
    ap.add_argument("--test", type=Path, nargs=2, required=True, metavar=("PLUS", "MINUS"))
    ap.add_argument("--second-seed", type=Path, nargs=2, default=None, metavar=("PLUS", "MINUS"))
    ap.add_argument("--drop-z", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    args = ap.parse_args(argv)
    cp, yc, ts, classes = engine_errors(args.cal[0])
    cm, yc2, ts2, _ = engine_errors(args.cal[1])
    tp, yt, _, _ = engine_errors(args.test[0])
    tm, yt2, _, _ = engine_errors(args.test[1])
    if not (np.array_equal(yc, yc2) and np.array_equal(yt, yt2) and ts == ts2):
        raise SystemExit("the +noise and -noise dumps must hold the same cells and timesteps")
    arms = {
        "+noise (the engine)": (cp, tp, 1),
        "-noise": (cm, tm, 1),
        "antithetic pair (mean of both)": ((cp + cm) / 2, (tp + tm) / 2, 2),
    }
    for name, (c, t, cost) in arms.items():
        for row in replay(c, yc, t, yt, ts, classes, cost, args.drop_z):
            (ca, cb, cc), (ta, tb, tc) = row["calibration"], row["test"]
            print(
                f"{name:32s} {row['run']:14s} calibration acc {ca:.4f} bal {cb:.4f} calls {cc:6.1f} | "
                f"test acc {ta:.4f} bal {tb:.4f} calls {tc:6.1f}",
                flush=True,
            )
    if args.second_seed:
        p2, y2, _, _ = engine_errors(args.second_seed[0])
        m2, _, _, _ = engine_errors(args.second_seed[1])
        n = len(y2)
        if not np.array_equal(y2, yc[:n]):
            raise SystemExit("--second-seed must hold the first cells of --cal (dump --limit N --seed 1)")
        pair, indep = gap_noise(cp[:n], cm[:n], p2, m2, y2)
        print(f"noise variance of the class gap, antithetic pair / two independent draws ({n} cells):")
        for u in np.argsort(ts):
            print(f"  t {ts[u]:4d}: {pair[u] / indep[u]:.2f}")
        print(f"  mean over timesteps: {np.mean(pair / indep):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
