"""How close is the model's white-cell differential to the truth, and do its 95 % intervals hold?

Mock slides from PBC **val** cells (never used for training or calibration): each slide draws N white
cells from a population differential (multinomial), then that many real val images of each class.
The model classifies every val image once (cached with ``--cache``); a slide's differential is the
model's calls on its cells (:mod:`napari_cytodiffusion.differential`: cells called erythroblast or
platelet leave the white-cell count, as they would on a smear). Per class it prints

- the bias and mean absolute error of the model's percentage against the true one of the same cells
  (classification error alone), and
- how often the exact 95 % interval holds the population percentage, for the model's counts and for
  the true counts of the same cells (a perfect classifier: counting error alone, >= 95 % by
  construction; Clopper-Pearson is conservative).

    python benchmarks/differential.py --cache runs/differential_pbcval.npz [--model default]
        [--speed balanced] [--slides 500] [--cells 100 200] [--out runs/differential.json]
        [--smear-slide 100 --work runs/differential_slide]

``--smear-slide N`` also sends one mock slide of N PBC val images through ``analyze --pool-scale``
(segmentation, stained cells, the size check) and compares the pooled differential with the classes
of the images' centre cells.

Measured figures: docs/measurements.md, *White-cell differential*.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
#: population differentials (shares of white cells) the slides are drawn from
POPULATIONS = {
    # healthy adults: IG under 1 % (0.5 % here)
    "normal adult": {
        "neutrophil": 0.60,
        "lymphocyte": 0.30,
        "monocyte": 0.06,
        "eosinophil": 0.03,
        "basophil": 0.005,
        "ig": 0.005,
    },
    "normal adult, 1 erythroblast per 100 white cells": {
        "neutrophil": 0.60,
        "lymphocyte": 0.30,
        "monocyte": 0.06,
        "eosinophil": 0.03,
        "basophil": 0.005,
        "ig": 0.005,
        "erythroblast": 0.01,
    },
    "IG 5 %": {
        "neutrophil": 0.555,
        "lymphocyte": 0.30,
        "monocyte": 0.06,
        "eosinophil": 0.03,
        "basophil": 0.005,
        "ig": 0.05,
    },
    "left shift": {
        "neutrophil": 0.70,
        "lymphocyte": 0.12,
        "monocyte": 0.06,
        "eosinophil": 0.01,
        "basophil": 0.01,
        "ig": 0.10,
    },
}


def classify_val(pbc: Path, model_name: str, speed: str, cache: Path | None) -> dict[str, np.ndarray]:
    """The model's call for every PBC val image (cached)."""
    import pandas as pd

    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.registry import get_model

    model = get_model(model_name)
    key = f"{model.short_id()} {speed}"
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return {k: z[k] for k in z.files}
    df = pd.read_csv(pbc / "labels.csv")
    df = df[df.split == "val"].reset_index(drop=True)
    t0 = time.perf_counter()
    crops = single_cell_crops([read_image(pbc / p) for p in df.path], model.metadata.preprocessing)
    res = classify_crops(model, crops, speed=speed, seed=0)
    out = {
        "key": np.array(key),
        "classes": np.array(model.classes),
        "true": np.array([model.classes.index(c) for c in df["class"]]),
        "pred": np.asarray(res.pred),
        "flagged": np.asarray(res.flagged),
    }
    print(f"classified {len(df)} val cells in {time.perf_counter() - t0:.0f} s ({key})", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out


def simulate(
    calls: dict[str, np.ndarray], population: dict[str, float], n_cells: int, slides: int, seed: int
):
    """Per slide: population counts drawn, cells drawn, model's and true differentials, alerts.

    ``population`` gives shares of white cells; an ``erythroblast`` entry is a rate per 100 white
    cells (a Poisson number of them joins the slide).
    """
    from napari_cytodiffusion.differential import differential
    from napari_cytodiffusion.pipeline import DEFAULT_TRIAGE

    classes = [str(c) for c in calls["classes"]]
    rng = np.random.default_rng(seed)
    white = [c for c in population if c != "erythroblast"]
    share = np.array([population[c] for c in white])
    nrbc = population.get("erythroblast", 0.0)
    pools = {c: np.flatnonzero(calls["true"] == classes.index(c)) for c in [*white, "erythroblast"]}
    rows = []
    for _ in range(slides):
        counts = dict(zip(white, rng.multinomial(n_cells, share / share.sum()), strict=True))
        counts["erythroblast"] = int(rng.poisson(nrbc * n_cells)) if nrbc else 0
        idx = np.concatenate(
            [rng.choice(pools[c], size=k, replace=k > len(pools[c])) for c, k in counts.items()]
        )
        true = {c: int(k) for c, k in counts.items()}
        pred = {c: int((calls["pred"][idx] == i).sum()) for i, c in enumerate(classes)}
        sure = ~calls["flagged"][idx]
        unflagged = {c: int(((calls["pred"][idx] == i) & sure).sum()) for i, c in enumerate(classes)}
        d_true, d_model = differential(true, classes), differential(pred, classes)
        alerts = {}
        for c, limit in DEFAULT_TRIAGE["alert_classes"].items():
            if c not in classes:
                continue
            # the triage's rule: a white-cell class as a share of the white cells, others of all cells
            base_t = d_true["leukocytes"] if c in d_true["percent"] else len(idx)
            base_m = d_model["leukocytes"] if c in d_model["percent"] else len(idx)
            alerts[c] = {
                "true": bool(base_t and true.get(c, 0) / base_t > limit),
                "all calls": bool(base_m and pred[c] / base_m > limit),
                "unflagged calls": bool(base_m and unflagged[c] / base_m > limit),
            }
        rows.append(
            {
                "true": d_true,
                "model": d_model,
                "alerts": alerts,
                "left_out": int(sum(pred[c] for c in classes if c not in white)),
                "flagged": float(calls["flagged"][idx].mean()),
            }
        )
    return rows


def summarise(rows, population: dict[str, float]) -> dict:
    out = {"per_class": {}}
    for c, p in population.items():
        if c not in rows[0]["model"]["percent"]:
            continue
        model_pct = np.array([r["model"]["percent"][c] for r in rows], dtype=float)
        true_pct = np.array([r["true"]["percent"][c] for r in rows], dtype=float)

        def covers(key: str, c: str = c, p: float = p) -> float:
            return float(np.mean([r[key]["ci95"][c][0] <= 100 * p <= r[key]["ci95"][c][1] for r in rows]))

        out["per_class"][c] = {
            "population_percent": 100 * p,
            "bias": float(np.mean(model_pct - true_pct)),
            "mae": float(np.mean(np.abs(model_pct - true_pct))),
            "coverage_model": covers("model"),
            "coverage_true_counts": covers("true"),
            "ci_width": float(np.mean([r["model"]["ci95"][c][1] - r["model"]["ci95"][c][0] for r in rows])),
        }
    # the triage's alerts (IG > 2 % of the white cells, any erythroblast): how often they fire
    out["alerts"] = {
        c: {key: float(np.mean([r["alerts"][c][key] for r in rows])) for key in rows[0]["alerts"][c]}
        for c in rows[0]["alerts"]
    }
    out["left_out_per_slide"] = float(np.mean([r["left_out"] for r in rows]))
    out["flagged"] = float(np.mean([r["flagged"] for r in rows]))
    return out


def smear_slide(pbc: Path, model: str, speed: str, n: int, seed: int, work: Path) -> dict:
    """One mock slide through the smear path: ``analyze --pool-scale`` on N PBC val images.

    The images are drawn by the normal adult population (each holds one white cell at its centre,
    often with platelets or red cells around it) and linked into ``work/fields``; the pooled
    differential of the run is compared with the classes of the centre cells.
    """
    import pandas as pd

    from napari_cytodiffusion.batch import analysis_options, run_analysis

    population = POPULATIONS["normal adult"]
    df = pd.read_csv(pbc / "labels.csv")
    df = df[df.split == "val"]
    rng = np.random.default_rng(seed)
    counts = {
        c: int(k) for c, k in zip(population, rng.multinomial(n, list(population.values())), strict=True)
    }
    fields, out = work / "fields", work / "out"
    fields.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for c, k in counts.items():
        pool = df[df["class"] == c]["path"].to_numpy()
        for rel in rng.choice(pool, size=k, replace=False):
            link = fields / Path(rel).name
            if not link.exists():
                link.symlink_to((pbc / rel).resolve())
    paths = sorted(fields.iterdir())
    t0 = time.perf_counter()
    report = run_analysis(paths, out, analysis_options(model=model, speed=speed, pool_scale=True), say=None)
    diff = report["differential"]
    true = {c: 100.0 * k / n for c, k in counts.items()}
    print(
        f"\nsmear path: {n} PBC val images (normal adult draw) through analyze --pool-scale in "
        f"{time.perf_counter() - t0:.0f} s; {diff['leukocytes']} white cells counted"
    )
    print("class        true %  model %  95% interval")
    for c in population:
        lo, hi = diff["ci95"][c]
        print(f"{c:<12} {true[c]:6.1f} {diff['percent'][c]:8.1f}  {lo:.1f}-{hi:.1f}")
    print("not counted:", {c: diff["counts"][c] for c in diff["counts"] if c not in population})
    return {"true_counts": counts, "differential": diff, "images_failed": report["failed"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pbc", type=Path, default=SHARED / "pbc")
    ap.add_argument("--model", default="default")
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--cache", type=Path, default=None, help="npz of the model's calls on PBC val")
    ap.add_argument("--slides", type=int, default=500)
    ap.add_argument("--cells", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--smear-slide",
        type=int,
        default=0,
        help="also run one mock slide of this many PBC val images through analyze (the smear path)",
    )
    ap.add_argument("--work", type=Path, default=Path("runs/differential_slide"), help="for --smear-slide")
    args = ap.parse_args(argv)
    calls = classify_val(args.pbc, args.model, args.speed, args.cache)
    report = {"model": str(calls["key"]), "slides": args.slides, "results": {}}
    for name, population in POPULATIONS.items():
        for n in args.cells:
            s = summarise(simulate(calls, population, n, args.slides, args.seed), population)
            report["results"][f"{name}, {n} cells"] = s
            print(
                f"\n{name}, {n} white cells per slide, {args.slides} slides "
                f"(cells called erythroblast/platelet per slide: {s['left_out_per_slide']:.1f}; flagged {s['flagged']:.0%})"
            )
            print("class        pop.%   bias   MAE   CI width   CI holds pop.% (model / true counts)")
            for c, r in s["per_class"].items():
                print(
                    f"{c:<12} {r['population_percent']:5.1f} {r['bias']:+6.2f} {r['mae']:5.2f} {r['ci_width']:8.1f}"
                    f"   {r['coverage_model']:.1%} / {r['coverage_true_counts']:.1%}"
                )
            for c, a in s["alerts"].items():
                print(
                    f"triage alert {c}: fires on {a['all calls']:.1%} of slides counting every call, "
                    f"{a['unflagged calls']:.1%} counting unflagged calls (true counts: {a['true']:.1%})"
                )
    if args.smear_slide:
        report["smear_slide"] = smear_slide(
            args.pbc, args.model, args.speed, args.smear_slide, args.seed, args.work
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
