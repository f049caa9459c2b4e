"""Adapting the default model to another lab with a few labelled cells (LoRA + recalibration).

Data: ``../shared/data/segmentation_wbc`` (Zheng et al. 2018; other microscopes and stains than PBC).
The *adaptation lab* is ``dataset_1`` (rapid stain): a fixed stratified 40 % of its cells is the
test set; shots (K per class) and calibration cells (up to 10 per class) come only from the other
60 %. Cells never move between the two. ``dataset_2`` (CellaVision) is never used for training and
is reported as a second, unseen lab.

For K in 5, 10, 20: the diffusion model before and after fine-tuning (balanced accuracy, ECE of
P(correct), fine-tuning time, adapter size), and a discriminative baseline (a small CNN trained on
PBC train, then fine-tuned on the same shots).

    python benchmarks/few_shot_adaptation.py --pbc-cache pbc_cache.npz [--shots 5 10 20] [--out runs/fewshot]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
NAMES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}


def wbc_csv(ds: int, folder: Path) -> Path:
    import pandas as pd

    root = SHARED / "segmentation_wbc"
    df = pd.read_csv(root / f"labels_dataset_{ds}.csv")
    df.columns = ["id", "label"]
    rows = [
        {"path": str(root / f"dataset_{ds}" / f"{int(i):03d}.png"), "class": NAMES[int(c)]}
        for i, c in zip(df["id"], df["label"], strict=True)
        if (root / f"dataset_{ds}" / f"{int(i):03d}.png").is_file()
    ]
    out = folder / f"ds{ds}.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def stratified_test(y: np.ndarray, frac: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test += list(idx[: int(round(frac * len(idx)))])
    mask = np.zeros(len(y), bool)
    mask[test] = True
    return mask


def measure(model, crops, y, speed):
    from napari_cytodiffusion.classify.calibration import ece
    from napari_cytodiffusion.classify.classifier import classify_crops

    r = classify_crops(model, crops, speed=speed)
    present = np.unique(y)
    bal = float(np.mean([(r.pred[y == c] == c).mean() for c in present]))
    correct = (r.pred == y).astype(float)
    return {
        "n": int(len(y)),
        "accuracy": round(float(correct.mean()), 4),
        "balanced_accuracy": round(bal, 4),
        "ece_p_correct": round(ece(r.p_correct, correct), 4),
        "ece_max_prob": round(ece(r.probs.max(axis=1), correct), 4),
        "flagged_share": round(float(r.flagged.mean()), 4),
        "cells_per_second": round(len(y) / r.seconds, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pbc-cache", type=Path, required=True, help="npz from train_default_model.py prepare")
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: FinetuneConfig)")
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/fewshot"))
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(HERE))
    from generation_quality import predict, train_cnn

    from napari_cytodiffusion.adapt.finetune import FinetuneConfig, iter_finetune, split_shots
    from napari_cytodiffusion.crops import training_preprocessing
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, map_classes, read_labelled
    from napari_cytodiffusion.model.registry import get_model

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    base = get_model("default")
    pre, tpre = base.metadata.preprocessing, training_preprocessing(base.metadata.preprocessing)
    tmp = Path(tempfile.mkdtemp())
    sets = {}
    for ds in (1, 2):
        ls = read_labelled(wbc_csv(ds, tmp))
        y = map_classes(ls.classes, base.classes)
        x = load_single_cell_crops(ls.paths, pre["size"], pre["single_cell"]["center_crop_fraction"])
        xs = load_single_cell_crops(ls.paths, tpre["size"], tpre["single_cell"]["center_crop_fraction"])
        sets[ds] = (x, xs, y)
    x1, xs1, y1 = sets[1]
    test = stratified_test(y1, 0.4, args.seed)
    pool = np.flatnonzero(~test)
    tests = {"dataset_1_test": (x1[test], y1[test]), "dataset_2_unseen": (sets[2][0], sets[2][2])}
    report: dict = {
        "split": {
            "adaptation_lab": "segmentation_wbc dataset_1",
            "test_cells": {k: int(len(v[1])) for k, v in tests.items()},
            "pool_cells": int(len(pool)),
            "test_class_counts": {base.classes[c]: int((y1[test] == c).sum()) for c in np.unique(y1[test])},
        },
        "before": {k: measure(base, *v, args.speed) for k, v in tests.items()},
    }
    print(json.dumps(report, indent=1), flush=True)

    # discriminative baseline: a small CNN trained on PBC train, fine-tuned on the shots
    z = np.load(args.pbc_cache)
    cache_cls = [str(c) for c in z["classes"]]
    remap = np.array([base.classes.index(c) for c in cache_cls])
    m = (z["train_images"].shape[1] - base.size) // 2
    xtr = z["train_images"][:, m : m + base.size, m : m + base.size]
    t0 = time.perf_counter()
    cnn0 = train_cnn(xtr, remap[z["train_labels"]], len(base.classes), 600, seed=args.seed)
    report["cnn_pretrain_seconds"] = round(time.perf_counter() - t0, 1)
    report["before"]["cnn"] = {
        k: round(float(np.mean([(predict(cnn0, v[0])[v[1] == c] == c).mean() for c in np.unique(v[1])])), 4)
        for k, v in tests.items()
    }

    for k in args.shots:
        tr_rel, cal_rel = split_shots(y1[pool], k, args.seed, max_calibration_per_class=10)
        tr, ca = pool[tr_rel], pool[cal_rel]
        cfg = FinetuneConfig(seed=args.seed)
        if args.steps:
            cfg.steps = args.steps
        out = args.out / f"adapter_k{k}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        last = None
        for ev in iter_finetune(
            base,
            xs1[tr],
            y1[tr],
            base.classes,
            out,
            cfg,
            calibration=(x1[ca], y1[ca]),
            data_description={"source": "segmentation_wbc dataset_1 pool", "shots_per_class": k},
        ):
            last = ev
        total = time.perf_counter() - t0
        adapted = get_model(last["adapter_dir"])
        meta = json.loads((out / "cytodiffusion_adapter.json").read_text())
        entry = {
            "train_cells": int(len(tr)),
            "calibration_cells": int(len(ca)),
            "finetune_seconds_total": round(total, 1),
            "finetune_seconds_training": meta["finetune"]["train_seconds"],
            "adapter_bytes": int(sum(f.stat().st_size for f in out.iterdir())),
            "after": {name: measure(adapted, *v, args.speed) for name, v in tests.items()},
        }
        # the same shots for the CNN baseline
        import copy

        cnn = copy.deepcopy(cnn0)
        cnn_ft = train_cnn(x1[tr], y1[tr], len(base.classes), 150, seed=args.seed, batch=32, net=cnn, lr=5e-4)
        entry["cnn_after"] = {
            name: round(
                float(np.mean([(predict(cnn_ft, v[0])[v[1] == c] == c).mean() for c in np.unique(v[1])])), 4
            )
            for name, v in tests.items()
        }
        report[f"shots_{k}"] = entry
        print(json.dumps({f"shots_{k}": entry}, indent=1), flush=True)
    (args.out / "few_shot_adaptation.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
