"""Are generated cells recognisable, and do they help when real cells are scarce?

1. Trains a small independent CNN on real PBC train cells (32 px crops, as the diffusion model sees them) and
   reports its accuracy on PBC val. The generator was trained with colour augmentation (stain, brightness,
   contrast, saturation jitter), so its cells vary in colour as much; a judge that has only seen PBC's tightly
   controlled colours judges colour, not morphology. By default (``--judge-augment colour``) the judge is
   trained with 90-degree rotations, flips and the diffusion model's own colour jitter. ``flips`` is the
   earlier judge (no colour jitter); ``model`` uses the model's full augmentation (free rotation, scale and
   shift too), which this small CNN learns much more slowly (val accuracy 0.73 after 2,500 steps).
2. Generates N cells per class with the default model and reports the share the CNN assigns to the intended class.
3. Augmentation experiment: a CNN trained on only K real cells per class, with and without M generated cells per
   class, evaluated on PBC val (synthetic images never enter an evaluation split).

    python benchmarks/generation_quality.py [--per-class 16] [--k 10] [--m 40] [--steps 25] [--guidance 2 [4 ...]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def small_cnn(n_classes: int):
    import torch.nn as nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        block(3, 32),
        block(32, 64),
        block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, n_classes),
    )


def train_cnn(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    steps: int,
    seed: int = 0,
    batch: int = 128,
    net=None,
    lr: float = 2e-3,
    augment=None,
    size: int | None = None,
):
    """Train (or, given ``net``, fine-tune) the small CNN.

    Without ``augment``: ``x`` are model-size crops, augmented by 90-degree rotations and flips.
    With an ``AugmentConfig``: ``x`` are the wider stored crops of diffusion training and each
    batch goes through the diffusion model's own augmentation down to ``size`` pixels.
    """
    import torch

    from napari_cytodiffusion.crops import to_model_tensor
    from napari_cytodiffusion.model.augment import augment_batch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    net = net if net is not None else small_cnn(n_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    xt = to_model_tensor(x) if augment is None else torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.as_tensor(y)
    net.train()
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(y), min(batch, len(y))))
        if augment is not None:
            xb = augment_batch(xt[idx], size, gen, augment)
        else:
            xb = torch.rot90(xt[idx], k=int(rng.integers(4)), dims=(2, 3))
            if rng.random() < 0.5:
                xb = torch.flip(xb, dims=(3,))
        loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def predict(net, x: np.ndarray) -> np.ndarray:
    import torch

    from napari_cytodiffusion.crops import to_model_tensor

    with torch.inference_mode():
        return np.concatenate(
            [net(to_model_tensor(x[i : i + 512])).argmax(1).numpy() for i in range(0, len(x), 512)]
        )


def balanced_accuracy(y, p, n):
    return float(np.mean([(p[y == c] == c).mean() for c in range(n) if (y == c).any()]))


def judge_training_set(args, model, xtr: np.ndarray, size: int, frac: float):
    """The judge's training crops and augmentation: ``xtr`` with flips only, or the wider stored crops of
    diffusion training with the model's augmentation (``colour``: without free rotation, scale and shift)."""
    if args.judge_augment == "flips":
        return xtr, None
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, read_labelled
    from napari_cytodiffusion.model.augment import AugmentConfig
    from napari_cytodiffusion.model.train import store_size

    recipe = model.metadata.training.get("recipe", {})
    margin = float(recipe.get("store_margin", 1.125))
    aug = AugmentConfig(**recipe.get("augment", {}))
    if args.judge_augment == "colour":
        aug.free_rotation, aug.scale_jitter, aug.shift = False, 0.0, 0.0
    ls = read_labelled(args.pbc / "labels.csv", split="train")
    x = load_single_cell_crops(ls.paths, store_size(size, margin), min(1.0, frac * margin), workers=2)
    return x, aug


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--pbc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc"
    )
    ap.add_argument(
        "--per-class", type=int, default=16, help="generated cells per class for the recognition test"
    )
    ap.add_argument("--k", type=int, default=10, help="real cells per class in the scarce-data experiment")
    ap.add_argument("--m", type=int, default=40, help="generated cells per class added in that experiment")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--scheduler", choices=["dpm-sde", "dpm", "ddim"], default="dpm-sde")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds of the recognition test start here")
    ap.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[4.0],
        help="guidance scale(s): the recognition test runs for each, the scarce-data experiment uses the first",
    )
    ap.add_argument("--no-scarce", action="store_true", help="skip the scarce-data experiment")
    ap.add_argument("--cnn-steps", type=int, default=600)
    ap.add_argument(
        "--judge",
        type=Path,
        default=None,
        help="file for the trained independent CNN: loaded if it exists and was trained with the same "
        "--cnn-steps/--judge-augment/model, else trained and saved there (saves ~15 min per run)",
    )
    ap.add_argument(
        "--judge-augment",
        choices=["colour", "model", "flips"],
        default="colour",
        help="the independent CNN's augmentation: rotations/flips + the model's colour jitter (default), "
        "the model's full augmentation, or rotations/flips only",
    )
    args = ap.parse_args()
    import torch

    from napari_cytodiffusion.generate.sampling import GenerateParams, generate
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, map_classes, read_labelled
    from napari_cytodiffusion.model.registry import get_model

    torch.set_num_threads(2)
    model = get_model("default")
    pre = model.metadata.preprocessing
    frac, size, n = pre["single_cell"]["center_crop_fraction"], model.size, len(model.classes)
    t0 = time.perf_counter()
    sets = {}
    for split in ("train", "val"):
        ls = read_labelled(args.pbc / "labels.csv", split=split)
        sets[split] = (
            load_single_cell_crops(ls.paths, size, frac, workers=2),
            map_classes(ls.classes, model.classes),
        )
    xtr, ytr = sets["train"]
    xva, yva = sets["val"]
    out = {"read_seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    settings = {
        "steps": args.cnn_steps,
        "augmentation": args.judge_augment,
        "model": model.metadata.content_hash,
        "train_cells": len(ytr),
    }
    cnn, loaded = None, False
    if args.judge is not None and args.judge.exists():
        saved = torch.load(args.judge, map_location="cpu", weights_only=True)
        if saved.get("settings") == settings:
            cnn = small_cnn(n)
            cnn.load_state_dict(saved["state_dict"])
            cnn.eval()
            loaded = True
        else:
            print(f"{args.judge} was trained with other settings; training a new judge", file=sys.stderr)
    if cnn is None:
        judge_x, judge_aug = judge_training_set(args, model, xtr, size, frac)
        cnn = train_cnn(judge_x, ytr, n, args.cnn_steps, augment=judge_aug, size=size)
        if args.judge is not None:
            tmp = args.judge.with_name(args.judge.name + ".tmp")
            torch.save({"settings": settings, "state_dict": cnn.state_dict()}, tmp)
            tmp.replace(args.judge)
    pv = predict(cnn, xva)
    out["independent_cnn"] = {
        "train_cells": len(ytr),
        "steps": args.cnn_steps,
        "augmentation": args.judge_augment,
        "loaded_from": str(args.judge) if loaded else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "val_accuracy": round(float((pv == yva).mean()), 4),
        "val_balanced_accuracy": round(balanced_accuracy(yva, pv, n), 4),
    }
    out["independent_cnn"]["val_recall_per_class"] = {
        model.classes[c]: round(float((pv[yva == c] == c).mean()), 3) for c in range(n)
    }
    ids = np.array([c for c in range(n) for _ in range(args.per_class)])
    out["generated"] = []
    for guidance in args.guidance:
        params = GenerateParams(steps=args.steps, guidance=guidance, scheduler=args.scheduler)
        t0 = time.perf_counter()
        gen = generate(model, list(ids), list(range(args.first_seed, args.first_seed + len(ids))), params)
        dt = time.perf_counter() - t0
        pg = predict(cnn, gen)
        out["generated"].append(
            {
                "per_class": args.per_class,
                "steps": args.steps,
                "scheduler": args.scheduler,
                "guidance": guidance,
                "first_seed": args.first_seed,
                "seconds_per_cell_cpu": round(dt / len(ids), 3),
                "recovered_by_independent_cnn": round(float((pg == ids).mean()), 4),
                "recovered_per_class": {
                    model.classes[c]: round(float((pg[ids == c] == c).mean()), 3) for c in range(n)
                },
                # what the judge called the cells it did not recover, per intended class
                "misread_as": {
                    model.classes[c]: {
                        model.classes[k]: int(v)
                        for k, v in zip(
                            *np.unique(pg[(ids == c) & (pg != c)], return_counts=True), strict=True
                        )
                    }
                    for c in range(n)
                    if ((ids == c) & (pg != c)).any()
                },
            }
        )
        print(json.dumps(out["generated"][-1]), flush=True)
    if args.no_scarce:
        print(json.dumps(out, indent=1))
        return 0
    params = GenerateParams(steps=args.steps, guidance=args.guidance[0], scheduler=args.scheduler)
    # scarce real data, with and without synthetic cells
    rng = np.random.default_rng(0)
    few = np.concatenate([rng.choice(np.flatnonzero(ytr == c), args.k, replace=False) for c in range(n)])
    syn_ids = [c for c in range(n) for _ in range(args.m)]
    syn = generate(model, syn_ids, [10_000 + i for i in range(len(syn_ids))], params)
    res = {}
    for name, (x, y) in {
        "real_only": (xtr[few], ytr[few]),
        "real_plus_synthetic": (np.concatenate([xtr[few], syn]), np.concatenate([ytr[few], syn_ids])),
    }.items():
        accs = []
        for seed in range(3):
            net = train_cnn(x, y, n, steps=300, seed=seed, batch=64)
            accs.append(balanced_accuracy(yva, predict(net, xva), n))
        res[name] = {
            "n_train": len(y),
            "val_balanced_accuracy_mean_of_3": round(float(np.mean(accs)), 4),
            "runs": [round(a, 4) for a in accs],
        }
    out["scarce_data_experiment"] = {"real_per_class": args.k, "synthetic_per_class": args.m, **res}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
