"""Adapting the default model to another lab with a few labelled cells (LoRA + recalibration).

Data: ``../shared/data/segmentation_wbc`` (Zheng et al. 2018; other microscopes and stains than PBC).
The *adaptation lab* is ``dataset_1`` (rapid stain): a fixed stratified 40 % of its cells is the
test set; shots (K per class) and calibration cells (``--calibration-per-class``, up to 50 per class
as ``finetune`` holds out by default) come only from the other
60 %. Cells never move between the two. ``dataset_2`` (CellaVision) is never used for training and
is reported as a second, unseen lab.

For K in 5, 10, 20: the diffusion model before and after fine-tuning (balanced accuracy, ECE of
P(correct), fine-tuning time, adapter size), and a discriminative baseline (a small CNN trained on
PBC train, then fine-tuned on the same shots).

One split of 300 cells is a noisy measurement (119 test cells; 9 eosinophils), so ``--repeats R``
draws R independent splits (seeds ``seed`` ... ``seed + R - 1``: new test cells, shots and
calibration cells, a new adapter each) and reports the mean and spread of balanced accuracy and
the ECE of P(correct) pooled over every repeat's test predictions, beside the ECE a perfectly
calibrated P(correct) would show on that many predictions (its noise floor).

    python benchmarks/few_shot_adaptation.py --pbc-cache pbc_cache.npz [--shots 5 10 20] [--repeats 5]
        [--out runs/fewshot]
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
    """Metrics of ``model`` on labelled crops, plus the raw P(correct) and correctness for pooling."""
    from napari_cytodiffusion.classify.calibration import ece
    from napari_cytodiffusion.classify.classifier import classify_crops

    r = classify_crops(model, crops, speed=speed)
    correct = (r.pred == y).astype(float)
    metrics = {
        "n": int(len(y)),
        "accuracy": round(float(correct.mean()), 4),
        "balanced_accuracy": round(balanced(r.pred, y), 4),
        "ece_p_correct": round(ece(r.p_correct, correct), 4),
        "ece_max_prob": round(ece(r.probs.max(axis=1), correct), 4),
        "flagged_share": round(float(r.flagged.mean()), 4),
        "cells_per_second": round(len(y) / r.seconds, 2),
    }
    return metrics, np.asarray(r.p_correct, float), correct


def balanced(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, float)
    return {
        "mean": round(float(v.mean()), 4),
        "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
    }


def pooled_calibration(p_correct: np.ndarray, correct: np.ndarray, seed: int) -> dict:
    """ECE of P(correct) over the test cells of every repeat together, with its noise floor.

    The floor is the mean ECE a perfectly calibrated P(correct) with the same values would show
    on this many cells (outcomes drawn from it); the 90 % interval is a bootstrap over cells.
    """
    from napari_cytodiffusion.classify.calibration import ece

    rng = np.random.default_rng(seed)
    n = len(p_correct)
    floor = [ece(p_correct, (rng.random(n) < p_correct).astype(float)) for _ in range(300)]
    boot = []
    for _ in range(300):
        i = rng.integers(0, n, n)
        boot.append(ece(p_correct[i], correct[i]))
    return {
        "n_predictions": int(n),
        "ece": round(ece(p_correct, correct), 4),
        "ece_90ci": [round(float(np.quantile(boot, 0.05)), 4), round(float(np.quantile(boot, 0.95)), 4)],
        "ece_if_perfectly_calibrated": round(float(np.mean(floor)), 4),
        "mean_p_correct": round(float(p_correct.mean()), 4),
        "accuracy": round(float(correct.mean()), 4),
    }


def save_pooled(pooled: list[dict], path: Path) -> None:
    """Every repeat's test P(correct) and correctness (``<setting>_r<repeat>_p_correct`` / ``_correct``).

    So the pooled ECE of any subset of repeats can be recomputed without classifying again.
    """
    arrays = {}
    for r, entry in enumerate(pooled):
        for setting, (pc, ok) in entry.items():
            arrays[f"{setting}_r{r}_p_correct"] = pc
            arrays[f"{setting}_r{r}_correct"] = ok
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def cnn_balanced(net, tests: dict) -> dict[str, float]:
    from generation_quality import predict

    return {name: round(balanced(predict(net, x), y), 4) for name, (x, y) in tests.items()}


def one_repeat(base, sets, seed: int, args, cnn0, unseen: bool) -> tuple[dict, dict]:
    """One split of dataset 1 (test / pool), every K fine-tuned on it; returns (report, pooled arrays)."""
    import copy
    import shutil

    from generation_quality import train_cnn

    from napari_cytodiffusion.adapt.finetune import FinetuneConfig, iter_finetune, split_shots
    from napari_cytodiffusion.model.registry import get_model

    x1, xs1, y1 = sets[1]
    test = stratified_test(y1, 0.4, seed)
    pool = np.flatnonzero(~test)
    tests = {"dataset_1_test": (x1[test], y1[test])}
    if unseen:
        tests["dataset_2_unseen"] = (sets[2][0], sets[2][2])
    pooled: dict = {}
    before = {}
    for name, v in tests.items():
        before[name], pc, ok = measure(base, *v, args.speed)
        if name == "dataset_1_test":
            pooled["before"] = (pc, ok)
    report: dict = {
        "seed": seed,
        "split": {
            "adaptation_lab": "segmentation_wbc dataset_1",
            "test_cells": {k: int(len(v[1])) for k, v in tests.items()},
            "pool_cells": int(len(pool)),
            "test_class_counts": {base.classes[c]: int((y1[test] == c).sum()) for c in np.unique(y1[test])},
        },
        "before": before,
    }
    report["before"]["cnn"] = cnn_balanced(cnn0, tests)
    print(json.dumps(report, indent=1), flush=True)
    for k in args.shots:
        tr_rel, cal_rel = split_shots(y1[pool], k, seed, max_calibration_per_class=args.calibration_per_class)
        tr, ca = pool[tr_rel], pool[cal_rel]
        cfg = FinetuneConfig(seed=seed)
        if args.steps:
            cfg.steps = args.steps
        out = args.out / f"adapter_k{k}" if seed == args.seed else args.out / f"seed{seed}" / f"adapter_k{k}"
        if out.exists():
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
        after = {}
        for name, v in tests.items():
            after[name], pc, ok = measure(adapted, *v, args.speed)
            if name == "dataset_1_test":
                pooled[f"shots_{k}"] = (pc, ok)
        entry = {
            "train_cells": int(len(tr)),
            "calibration_cells": int(len(ca)),
            "finetune_seconds_total": round(total, 1),
            "finetune_seconds_training": meta["finetune"]["train_seconds"],
            "adapter_bytes": int(sum(f.stat().st_size for f in out.iterdir())),
            "after": after,
        }
        # the same shots for the CNN baseline
        cnn = copy.deepcopy(cnn0)
        cnn_ft = train_cnn(x1[tr], y1[tr], len(base.classes), 150, seed=seed, batch=32, net=cnn, lr=5e-4)
        entry["cnn_after"] = cnn_balanced(cnn_ft, tests)
        report[f"shots_{k}"] = entry
        print(json.dumps({f"seed_{seed}/shots_{k}": entry}, indent=1), flush=True)
    return report, pooled


def summarise(repeats: list[dict], pooled: list[dict], shots: list[int], seed: int) -> dict:
    """Across repeats: mean and spread of balanced accuracy, and the pooled calibration of P(correct)."""
    name = "dataset_1_test"
    summary: dict = {
        "repeats": len(repeats),
        "before": {
            "balanced_accuracy": spread([r["before"][name]["balanced_accuracy"] for r in repeats]),
            "cnn_balanced_accuracy": spread([r["before"]["cnn"][name] for r in repeats]),
            "p_correct_pooled": pooled_calibration(
                *(np.concatenate(a) for a in zip(*[p["before"] for p in pooled], strict=True)), seed
            ),
        },
    }
    for k in shots:
        entries = [r[f"shots_{k}"] for r in repeats]
        summary[f"shots_{k}"] = {
            "balanced_accuracy": spread([e["after"][name]["balanced_accuracy"] for e in entries]),
            "gain_points": spread(
                [
                    100 * (e["after"][name]["balanced_accuracy"] - r["before"][name]["balanced_accuracy"])
                    for e, r in zip(entries, repeats, strict=True)
                ]
            ),
            "cnn_balanced_accuracy": spread([e["cnn_after"][name] for e in entries]),
            "ece_p_correct_per_repeat": spread([e["after"][name]["ece_p_correct"] for e in entries]),
            "p_correct_pooled": pooled_calibration(
                *(np.concatenate(a) for a in zip(*[p[f"shots_{k}"] for p in pooled], strict=True)), seed
            ),
            "finetune_seconds_total": spread([e["finetune_seconds_total"] for e in entries]),
            "adapter_bytes_max": max(e["adapter_bytes"] for e in entries),
        }
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pbc-cache", type=Path, required=True, help="npz from train_default_model.py prepare")
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: FinetuneConfig)")
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="independent splits (seeds seed, seed+1, ...): new test cells, shots and calibration cells each; "
        "the summary gives mean and spread, and the ECE of P(correct) pooled over every repeat's test cells",
    )
    ap.add_argument(
        "--calibration-per-class",
        type=int,
        default=50,
        help="recalibration cells per class from the pool (after the shots); 50 is finetune's default "
        "(--calibration-cells); the tables of sessions 26-35 used 10",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/fewshot"))
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    import torch

    sys.path.insert(0, str(HERE))
    from generation_quality import train_cnn

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

    # discriminative baseline: a small CNN trained on PBC train (once), fine-tuned on each repeat's shots
    z = np.load(args.pbc_cache)
    cache_cls = [str(c) for c in z["classes"]]
    remap = np.array([base.classes.index(c) for c in cache_cls])
    m = (z["train_images"].shape[1] - base.size) // 2
    xtr = z["train_images"][:, m : m + base.size, m : m + base.size]
    t0 = time.perf_counter()
    cnn0 = train_cnn(xtr, remap[z["train_labels"]], len(base.classes), 600, seed=args.seed)
    cnn_seconds = round(time.perf_counter() - t0, 1)

    repeats, pooled = [], []
    for r in range(args.repeats):
        rep, arrays = one_repeat(base, sets, args.seed + r, args, cnn0, unseen=(r == 0))
        repeats.append(rep)
        pooled.append(arrays)
        report = dict(repeats[0])  # the first repeat keeps the single-run layout
        report["cnn_pretrain_seconds"] = cnn_seconds
        report["calibration_per_class"] = args.calibration_per_class
        if args.repeats > 1:
            report["repeats"] = repeats
            report["summary"] = summarise(repeats, pooled, args.shots, args.seed)
        tmp_out = args.out / "few_shot_adaptation.json.tmp"
        tmp_out.write_text(json.dumps(report, indent=1))
        tmp_out.replace(args.out / "few_shot_adaptation.json")
        save_pooled(pooled, args.out / "pooled_predictions.npz")
    if args.repeats > 1:
        print(json.dumps({"summary": report["summary"]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
