"""Could a learnt read-out of the diffusion errors beat "lowest error wins"? (offline, full-grid dumps)

The engine calls the class with the lowest weighted error. A class's errors across noise levels
hold more than their weighted mean: a cell of one class may be explained almost as well by another
at high noise and not at low noise. This script fits a multinomial logistic regression
(class-balanced, L2; PyTorch L-BFGS, no other dependency) on the calibration dump's errors and
compares it with the engine's rule on the same cells of each test dump. Features, per class:

- ``weighted``: the class's weighted error (the engine's score) minus the best class's, over
  their mean (8 features: the rule itself, with learnt offsets and scales);
- ``bands``: the mean log error gap to the best class in each of four noise bands (timestep
  quartiles; 32 features);
- ``bands+null``: ``bands`` and the null label's log gap to the best class in each band (the
  dumps must hold the null label).

Every unit of the dump is used (the full grid). With ``--speeds``, the model's adaptive engine is
also replayed on the dumps (``anomaly_features.replay``: the engine's rounds and paired test) and
a read-out is fitted on what such a run leaves, each class's evidence (its weighted paired gap to
the winner, over the winner's weighted error; a dropped class's rests on the units it saw).
Besides each test dump it prints a k-fold cross-validation on the calibration cells, a second
estimate from other cells (column ``cv``; for the rule, which fits nothing, its figure on them).
Balanced accuracy on a few hundred cells per class moves by ~0.5-0.7 points between noise draws
(``seed_stability.py``): read small differences as such.

Usage::

    python benchmarks/full_grid_errors.py --int8 --cache pbc_cache.npz --split cal \\
        --per-class 100000 --out runs/grid_cal.npz          # likewise --split val
    python benchmarks/error_readout.py --calibration runs/grid_cal.npz --test runs/grid_val.npz \\
        [--kinds weighted bands bands+null] [--c 0.3 1 3] [--folds 5] [--out readout.json] \\
        [--speeds balanced accurate] [--model pbc32]   # accurate needs 2-view dumps (--views 2)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_features import balanced_accuracy, load_dumps, replay  # balanced_accuracy(true, calls)


def load(path: Path) -> dict:
    """A dump of ``full_grid_errors.py``: errors (N, C[+1], U), labels, timesteps, weights, classes."""
    z = np.load(path)
    need = {"errors", "labels", "timesteps", "weights", "classes"}
    if not need <= set(z.files):
        raise SystemExit(f"{path}: not a full-grid dump (needs {', '.join(sorted(need))})")
    d = {k: z[k] for k in need}
    n_classes = len(d["classes"])
    d["null"] = d["errors"].shape[1] == n_classes + 1
    return d


def rule(d: dict) -> np.ndarray:
    """The engine's full-grid call: the lowest weighted mean error."""
    n_classes = len(d["classes"])
    return np.argmin((d["errors"][:, :n_classes] * d["weights"]).sum(-1), axis=1)


def features(d: dict, kind: str) -> np.ndarray:
    n_classes = len(d["classes"])
    e = d["errors"]
    ec = e[:, :n_classes]
    if kind == "weighted":
        s = (ec * d["weights"]).sum(-1)
        return (s - s.min(1, keepdims=True)) / s.mean(1, keepdims=True)
    bands = np.array_split(np.argsort(d["timesteps"], kind="stable"), 4)
    log = np.log(np.maximum(ec, 1e-12))
    best = log.min(1, keepdims=True)
    parts = [(log - best)[:, :, b].mean(-1) for b in bands]
    if kind == "bands+null":
        if not d["null"]:
            raise SystemExit(
                "bands+null needs dumps with the null label (full_grid_errors.py without --without-null)"
            )
        gap = np.log(np.maximum(e[:, n_classes], 1e-12))[:, None] - best
        parts += [gap[:, :, b].mean(-1) for b in bands]
    elif kind != "bands":
        raise SystemExit(f"unknown feature kind {kind!r}")
    return np.concatenate(parts, axis=1)


class Readout:
    """Multinomial logistic regression, class-balanced, L2 penalty ``1 / (2 C n)`` on standardised features."""

    def __init__(self, c: float = 1.0):
        self.c = c

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> Readout:
        import torch

        xt = torch.tensor(x, dtype=torch.float64)
        self.mu, self.sd = xt.mean(0), xt.std(0) + 1e-9
        xt = (xt - self.mu) / self.sd
        yt = torch.tensor(y)
        counts = np.maximum(np.bincount(y, minlength=n_classes), 1)
        cw = torch.tensor(len(y) / (n_classes * counts), dtype=torch.float64)
        self.w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=500, line_search_fn="strong_wolfe")
        penalty = 0.5 / (self.c * len(y))

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ self.w + self.b, yt, weight=cw)
            loss = loss + penalty * (self.w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xt = (torch.tensor(x, dtype=torch.float64) - self.mu) / self.sd
            return (xt @ self.w + self.b).argmax(1).numpy()


def run(cal: dict, tests: dict[str, dict], kinds: list[str], cs: list[float], folds: int, seed: int) -> dict:
    """Figures of the rule and of each read-out (kind, C) on each test dump and in cross-validation."""
    n_classes = len(cal["classes"])
    for name, d in tests.items():
        if list(d["classes"]) != list(cal["classes"]) or not np.array_equal(d["timesteps"], cal["timesteps"]):
            raise SystemExit(f"{name}: other classes or timesteps than the calibration dump")
    y = cal["labels"]
    out = {"rule": {"cv": balanced_accuracy(y, rule(cal))}, "readouts": []}
    for name, d in tests.items():
        out["rule"][name] = balanced_accuracy(d["labels"], rule(d))
    for kind in kinds:
        x = features(cal, kind)
        for c in cs:
            xs = {name: (features(d, kind), d["labels"]) for name, d in tests.items()}
            out["readouts"].append({"kind": kind} | _cross_validated(x, y, xs, c, folds, seed, n_classes))
    return out


def _cross_validated(x, y, xs: dict, c: float, folds: int, seed: int, n_classes: int) -> dict:
    """A read-out's k-fold figure on the calibration cells, its fit, and its figure on each test set."""
    fold = np.random.default_rng(seed).integers(0, folds, len(y))
    pred = np.zeros_like(y)
    for k in range(folds):
        pred[fold == k] = Readout(c).fit(x[fold != k], y[fold != k], n_classes).predict(x[fold == k])
    model = Readout(c).fit(x, y, n_classes)
    row = {"c": c, "cv": balanced_accuracy(y, pred), "fit": balanced_accuracy(y, model.predict(x))}
    return row | {name: balanced_accuracy(yt, model.predict(xt)) for name, (xt, yt) in xs.items()}


def run_engine(
    cal: Path, tests: list[Path], speed: str, model: str | None, cs, folds: int, seed: int
) -> dict:
    """The rule and read-outs of the class evidence the model's ``speed`` preset leaves (replayed)."""
    from napari_cytodiffusion.classify.classifier import PRESETS
    from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence, weighted_score
    from napari_cytodiffusion.model.folder import read_metadata
    from napari_cytodiffusion.model.registry import resolve_model

    meta = read_metadata(resolve_model(model))
    cfg = EngineConfig.from_calibration(
        {"engine": dict((meta.calibration or {})["engine"])}, **PRESETS[speed]
    )
    n_classes = meta.n_classes

    def evidence(path: Path):
        d = load_dumps([path])
        run = replay(d["errors"], d, cfg)
        winner, gap = class_evidence(run)
        own = weighted_score(run.errors, run.unit_weights)[np.arange(len(winner)), winner]
        return gap / own[:, None], winner, d["labels"], float(run.calls.mean())

    x, winner, y, calls = evidence(cal)
    out = {"speed": speed, "calls_per_cell": {"cv": calls}, "rule": {"cv": balanced_accuracy(y, winner)}}
    xs = {}
    for path in tests:
        xt, wt, yt, calls_t = evidence(path)
        out["rule"][path.stem], out["calls_per_cell"][path.stem] = balanced_accuracy(yt, wt), calls_t
        xs[path.stem] = (xt, yt)
    out["readouts"] = [_cross_validated(x, y, xs, c, folds, seed, n_classes) for c in cs]
    return out


def _print(title: str, rule: dict, rows: list[dict], names: list[str]) -> None:
    print(f"{title:<22}" + "  ".join(f"{n:>14}" for n in names))
    print(f"{'lowest error (rule)':<22}" + "  ".join(f"{rule[n]:14.4f}" for n in names))
    for row in rows:
        label = (f"{row['kind']} " if "kind" in row else "") + f"C={row['c']:g}"
        print(f"{label:<22}" + "  ".join(f"{row[n]:14.4f}" for n in names) + f"   (fit {row['fit']:.4f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--calibration", type=Path, required=True, help="full-grid dump the read-out is fitted on"
    )
    ap.add_argument("--test", type=Path, nargs="+", required=True, help="full-grid dumps of test cells")
    ap.add_argument("--kinds", nargs="+", default=["weighted", "bands", "bands+null"])
    ap.add_argument("--c", type=float, nargs="+", default=[0.3, 1.0, 3.0], help="inverse L2 strengths")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--speeds",
        nargs="*",
        default=[],
        choices=["fast", "balanced", "accurate"],
        help="also replay these presets of the model's engine and fit on their class evidence",
    )
    ap.add_argument("--model", default=None, help="model whose engine settings to replay (default: shipped)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON")
    a = ap.parse_args(argv)
    if a.folds < 2:
        raise SystemExit("--folds must be at least 2")
    cal = load(a.calibration)
    tests = {p.stem: load(p) for p in a.test}
    kinds = [
        k for k in a.kinds if k != "bands+null" or (cal["null"] and all(d["null"] for d in tests.values()))
    ]
    res = run(cal, tests, kinds, a.c, a.folds, a.seed)
    names = ["cv", *tests]
    _print("full grid", res["rule"], res["readouts"], names)
    res["engine"] = []
    for speed in a.speeds:
        got = run_engine(a.calibration, a.test, speed, a.model, a.c, a.folds, a.seed)
        calls = ", ".join(f"{n} {v:.1f}" for n, v in got["calls_per_cell"].items())
        _print(f"{speed} (replayed)", got["rule"], got["readouts"], names)
        print(f"  calls per cell: {calls}")
        res["engine"].append(got)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
