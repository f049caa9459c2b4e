"""How far apart the model draws its classes, from the counterfactuals of real cells, against its confusions.

For ``--per-class`` PBC val cells of each class, every other class is a target: the cell is redrawn as its
own (true) class and as the target from the same noise (``classify.counterfactual.explain``, strength 0.5,
seed 0), and ``class_change`` is the mean per-pixel RGB distance between the two redrawings. Printed: the
matrix of mean class change (row: the cells' class, column: the target), and its Spearman correlation over
the off-diagonal pairs with the model's confusion rates of its validation record (the share of a class's
cells called the other class, both directions summed, since a small class change should go with frequent
confusions if it measures what the classifier finds close)::

    python benchmarks/class_change.py [--model default] [--per-class 10] [--out runs/class_change.json]

Measured in session 49 (``pbc32``, ``--per-class 20``, 5 min on a 2-core CPU): mean class change of a class's
cells 9.2 (lymphocyte) to 13.9 (eosinophil); Spearman correlation with the confusion rate over the 28 pairs
-0.46 (p = 0.015); closest pairs basophil-lymphocyte 18.0, lymphocyte-monocyte 18.2 (IG-neutrophil 20.0). See
docs/measurements.md, *Counterfactuals: how far apart the model draws its classes*.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=SHARED / "pbc" / "labels.csv")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw of cells and of the noise")
    ap.add_argument("--out", type=Path, default=None, help="write the matrix and figures as JSON")
    args = ap.parse_args(argv)

    import pandas as pd
    from scipy.stats import spearmanr

    from napari_cytodiffusion.classify.counterfactual import explain
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.registry import get_model

    model = get_model(args.model)
    classes = list(model.classes)
    labels = pd.read_csv(args.data)
    val = labels[labels["split"] == "val"]
    picked = pd.concat(
        [g.sample(min(args.per_class, len(g)), random_state=args.seed) for _, g in val.groupby("class")]
    )
    pre = model.metadata.preprocessing
    k = len(classes)
    change = np.full((k, k), np.nan)
    t0 = time.perf_counter()
    for i, c in enumerate(classes):
        rows = picked[picked["class"].str.lower() == c.lower()]
        crops = single_cell_crops((read_image(args.data.parent / p) for p in rows["path"]), pre)
        for j in range(k):
            if j == i:
                continue
            *_, found = explain(model, crops, j, [i] * len(crops), strength=args.strength, seed=args.seed)
            change[i, j] = float(np.mean([f.class_change for f in found]))
        print(f"{c}: {len(crops)} cells, {time.perf_counter() - t0:.0f} s", flush=True)

    print("\nmean class change (RGB distance 0-441), row: the cells' class, column: redrawn as")
    print(" " * 13 + "".join(f"{c[:11]:>12}" for c in classes))
    for i, c in enumerate(classes):
        print(
            f"{c[:12]:>12} "
            + "".join("           -" if i == j else f"{change[i, j]:12.1f}" for j in range(k))
        )
    result = {"classes": classes, "per_class": args.per_class, "class_change": change.tolist()}
    record = (model.metadata.validation or {}).get("confusion_matrix")
    if record is not None:
        cm = np.asarray(record, dtype=float)
        rate = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        sym_change = [change[i, j] + change[j, i] for i, j in pairs]
        sym_rate = [rate[i, j] + rate[j, i] for i, j in pairs]
        rho, p = spearmanr(sym_change, sym_rate)
        print(f"\nSpearman correlation of class change and confusion rate over {len(pairs)} class pairs: "
              f"{rho:.2f} (p = {p:.2g}); a closer pair should be confused more (negative)")  # fmt: skip
        order = np.argsort(sym_change)
        print("closest pairs (class change both ways; confusion rate both ways):")
        for n in order[:5]:
            i, j = pairs[n]
            print(f"  {classes[i]} - {classes[j]}: {sym_change[n]:.1f}; {sym_rate[n]:.3f}")
        result.update({"spearman_rho": float(rho), "spearman_p": float(p)})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
