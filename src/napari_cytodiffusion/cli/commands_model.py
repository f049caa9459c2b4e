"""Sub-commands about the diffusion model: train, evaluate, generate, evaluate-generation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._common import DEVICE_HELP, classify_with_progress, count_arg, device_arg, out_dir, progress, seed_arg


def register(sub) -> None:
    p = sub.add_parser("train", help="train a class-conditional diffusion model on labelled cells")
    p.add_argument("--data", required=True, help="folder of class sub-folders, or CSV path,class[,split]")
    p.add_argument("--out", required=True, help="model folder to create (or resume)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--split", default=None, help="with a CSV: use only rows of this split")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="total training steps (default 20000); with --resume, the run's new total "
        "(default: the checkpoint's)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="cells per training step")
    p.add_argument("--lr", type=float, default=6e-4, help="AdamW learning rate after the warm-up")
    p.add_argument(
        "--min-lr",
        type=float,
        default=None,
        help="after the warm-up, let the learning rate fall on a cosine to this (default: constant)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="start from this model's weights ('default' or a folder) and keep training it: the data "
        "must have its classes; the architecture is the model's (--arch is ignored)",
    )
    p.add_argument(
        "--arch", default="default", choices=["default", "tiny"], help="tiny: 16 px, for quick tests"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="steps between checkpoints (OUT/checkpoints/last.pt)",
    )
    p.add_argument(
        "--max-seconds", type=float, default=None, help="stop (checkpoint + export) after this long"
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of weights, batches and augmentation")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--no-int8",
        action="store_true",
        help="do not write the int8 UNet (faster CPU inference; written when onnxruntime is installed)",
    )
    p.add_argument(
        "--float32",
        action="store_true",
        help="train in float32 throughout (default: bfloat16 autocast where it is fast: a CUDA GPU, "
        "or a CPU with AVX-512 BF16 or AMX, ~1.6x faster steps there)",
    )
    p.add_argument(
        "--distill-from",
        default=None,
        metavar="MODEL",
        help="instead of training from scratch, distil this model ('default' or a folder) into a "
        "narrower, faster UNet of --widths (the data must have the model's classes)",
    )
    p.add_argument(
        "--widths",
        default="16,32,64",
        help="with --distill-from: the student's channels per level (default 16,32,64: ~0.4x the "
        "cost per evaluation of the default model's 32,64,128)",
    )
    p.add_argument(
        "--class-weight",
        type=float,
        default=0.0,
        help="with --distill-from: also train the student as a classifier (cross-entropy of its "
        "per-class errors; every cell under every class). With the model's own --widths this "
        "fine-tunes the model itself, starting from its weights",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "models",
        help="list the models usable offline (bundled, then cached) with what they learnt from and measured",
    )
    p.add_argument(
        "model",
        nargs="?",
        help="a model's name or folder (or a LoRA adapter folder): show its card instead, i.e. what it is "
        "for, what it learnt from, its classes, what it never learnt, its figures and measured limits",
    )
    p.add_argument("--json", action="store_true", help="one JSON object: name -> {path, summary, about}")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "evaluate", help="accuracy, calibration and anomaly metrics on labelled single-cell images"
    )
    p.add_argument("--data", required=True, help="folder of class sub-folders, or CSV path,class[,split]")
    p.add_argument("--split", default=None, help="with a CSV: use only rows of this split (e.g. val)")
    p.add_argument("--ood", default=None, help="folder of out-of-distribution cells (anomaly AUROC)")
    p.add_argument("--model", default="default", help="model folder or name (default: bundled pbc32)")
    p.add_argument(
        "--speed",
        default="balanced",
        choices=["fast", "balanced", "accurate", "full"],
        help="classifier preset (as for classify); full: every class at every timestep",
    )
    p.add_argument("--limit", type=count_arg, default=None, help="evaluate a stratified subset of N cells")
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the classifier's noise (same seed, same calls)"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--out",
        required=True,
        help="output folder: metrics.json, predictions.csv (each cell's result and true class; with --ood "
        "also ood_predictions.csv), confusion_matrix.png, reliability_diagram.png",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="generate synthetic cells of a class")
    p.add_argument("--class", dest="cls", required=True, help="class name or 'all'")
    p.add_argument("-n", type=int, default=8, help="images per class")
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the first image; the run's i-th image uses seed + i"
    )
    p.add_argument("--steps", type=int, default=25, help="sampler steps (more: slower, finer)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument(
        "--scheduler",
        default="dpm-sde",
        choices=["dpm-sde", "dpm", "ddim"],
        help="sampler: SDE-DPM-Solver++ (default; noise drawn from each image's seed), DPM-Solver++ or DDIM",
    )
    p.add_argument("--model", default="default", help="model folder or name (default: bundled pbc32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--out",
        required=True,
        help="output folder: CLASS/CLASS_seedS.png, each with its recipe as JSON beside it",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "evaluate-generation", help="do generated cells look like their class? memorisation check"
    )
    p.add_argument("--generated", required=True, help="folder written by 'generate' (class sub-folders)")
    p.add_argument(
        "--train-data", default=None, help="real training cells (folder/CSV) for the memorisation check"
    )
    p.add_argument("--split", default=None, help="with a --train-data CSV: use only rows of this split")
    p.add_argument(
        "--model", default="default", help="model folder or name that classifies the generated cells"
    )
    p.add_argument("--out", required=True, help="output folder: metrics.json")
    p.set_defaults(func=cmd_evaluate_generation)


def cmd_models(a) -> int:
    from ..errors import ModelError
    from ..model.card import model_summary
    from ..model.registry import available_models, resolve_model
    from ..model.scope import model_about

    if a.model is not None:  # one model's card; a bad name or folder is the usual one-line error
        path = resolve_model(a.model, download=False)
        row = {"path": str(path), "summary": model_summary(path), "about": model_about(path)}
        if a.json:
            print(json.dumps({a.model: _about_json(row)}, indent=1, ensure_ascii=False))
        else:
            print(f"{row['summary']}\n{row['path']}\n")
            for heading, text in row["about"]:
                print(f"{heading}: {text}")
        return 0
    rows = {}
    for name, path in available_models().items():
        try:
            row = {"path": str(path), "summary": model_summary(path), "about": model_about(path)}
        except ModelError as exc:  # a broken cached folder is listed with what is wrong
            row = {"path": str(path), "summary": f"cannot use: {exc}", "about": []}
        rows[name] = row
    if a.json:
        print(json.dumps({k: _about_json(v) for k, v in rows.items()}, indent=1, ensure_ascii=False))
    else:
        for name, row in rows.items():
            print(f"{name}\t{row['summary']}\n\t{row['path']}")
        print(
            "(napari-cytodiffusion models NAME: what a model is for, never learnt and was measured to miss)"
        )
    return 0


def _about_json(row: dict) -> dict:
    """A models row for JSON: the card as a list of {heading, text}."""
    return row | {"about": [{"heading": h, "text": t} for h, t in row["about"]]}


def cmd_train(a) -> int:
    if a.distill_from:
        return _cmd_distill(a)
    from ..model.architecture import DEFAULT_ARCH, TINY_ARCH
    from ..model.train import TrainConfig, prepare_training_data, train

    arch = dict(TINY_ARCH if a.arch == "tiny" else DEFAULT_ARCH)
    classes = None
    if a.init_from and not a.resume:
        from ..model.registry import get_model

        base = get_model(a.init_from)
        arch = base.metadata.training.get("recipe", {}).get("arch")
        if arch is None:
            raise InputError(
                f"{a.init_from}: its metadata does not record the architecture it was trained with"
            )
        classes = list(base.classes)
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        min_lr=a.min_lr,
        init_from=None if a.resume else a.init_from,
        arch=arch,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
        max_seconds=a.max_seconds,
        device=device_arg(a.device),
        warmup_steps=min(500, max(1, (TrainConfig.steps if a.steps is None else a.steps) // 10)),
        int8=not a.no_int8,
        mixed_precision=not a.float32,
    )
    out = Path(a.out)
    if a.resume:
        import torch

        ck = out / "checkpoints" / "last.pt"
        if not ck.is_file():
            raise InputError(f"nothing to resume: {ck} does not exist")
        saved = torch.load(ck, map_location="cpu", weights_only=False)["config"]
        arch = saved["arch"]
        cfg.arch = arch
    size = int(arch["sample_size"])
    data = prepare_training_data(a.data, size, store_margin=cfg.store_margin, split=a.split, classes=classes)
    print(f"training on {len(data.labels)} cells of {len(data.classes)} classes: {', '.join(data.classes)}")
    return _drive(train(data, out, cfg, resume=a.resume), cfg.steps, "train", "model")


def _drive(events, total: int | None, desc: str, what: str) -> int:
    """Run a training generator under a progress bar; report where the model went.

    ``total`` may be ``None`` (a resumed run keeping its checkpoint's length): the events say it.
    """
    bar = progress(None, total=total, desc=desc)
    last = None
    for ev in events:
        if ev.get("total") and bar.total != ev["total"]:
            bar.total = ev["total"]
        bar.n = ev["step"]
        bar.set_postfix(loss=f"{ev['loss']:.4f}", **({"stage": ev["stage"]} if "stage" in ev else {}))
        bar.refresh()
        last = ev
    bar.close()
    print(
        f"{what} written to {last['model_dir']} after {last['step']} steps (loss {last['loss']:.4f})"
        + ("" if last.get("finished") else "; stopped early, continue with --resume")
    )
    return 0


def _cmd_distill(a) -> int:
    from ..model.architecture import parse_widths
    from ..model.distill import DistillConfig, distill
    from ..model.registry import get_model
    from ..model.train import prepare_training_data

    widths = parse_widths(a.widths)
    teacher = get_model(a.distill_from, device=device_arg(a.device))
    cfg = DistillConfig(
        steps=a.steps,
        lr=a.lr,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
        max_seconds=a.max_seconds,
        device=device_arg(a.device),
        warmup_steps=min(200, max(1, (DistillConfig.steps if a.steps is None else a.steps) // 10)),
        int8=not a.no_int8,
        class_weight=a.class_weight,
    )
    teacher_widths = teacher.metadata.training.get("recipe", {}).get("arch", {}).get("block_out_channels")
    if teacher_widths is not None and list(teacher_widths) == widths:
        cfg.init_from = "teacher"  # same size: fine-tune the model itself rather than start afresh
    data = prepare_training_data(a.data, teacher.size, split=a.split, classes=list(teacher.classes))
    print(f"distilling {teacher.short_id()} into widths {widths} on {len(data.labels)} cells")
    return _drive(
        distill(teacher, data, Path(a.out), widths, cfg, resume=a.resume), cfg.steps, "distil", "student"
    )


def _stratified(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    idx = np.arange(len(labels))
    if limit is None or limit >= len(labels):
        return idx
    rng = np.random.default_rng(seed)
    take = []
    classes = np.unique(labels)
    per = max(1, limit // len(classes))
    for c in classes:
        cand = idx[labels == c]
        take += list(rng.choice(cand, size=min(per, len(cand)), replace=False))
    return np.sort(np.array(take))


def _write_predictions(path: Path, paths, res, model, a, truth: np.ndarray | None = None) -> None:
    """Each evaluated cell's result (as ``classify`` writes it), after its true class and whether it was right."""
    from ..export import audit_trail, write_cells_csv

    df = res.to_frame()
    df.insert(0, "path", [str(Path(p).resolve()) for p in paths])
    if truth is not None:
        df.insert(1, "true_class", [model.classes[t] for t in truth])
        df.insert(2, "correct", res.pred == truth)
    write_cells_csv(df, path, audit_trail(model, {"speed": a.speed, "seed": a.seed}))


def cmd_evaluate(a) -> int:
    from ..evaluate.metrics import auroc, classification_metrics, flag_shares, sensitivity_at_specificity
    from ..evaluate.plots import confusion_png, reliability_png
    from ..io.atomic import write_json
    from ..io.datasets import load_single_cell_crops, map_classes, read_labelled
    from ..model.onnx_backend import backend_name
    from ..model.registry import get_model

    model = get_model(a.model, device=device_arg(a.device))  # a bad model or device: no folder made
    out = out_dir(a.out)
    data = read_labelled(a.data, split=a.split)
    y = map_classes(data.classes, model.classes, where=str(a.data))
    sel = _stratified(y, a.limit, a.seed)
    pre = model.metadata.preprocessing
    crops = load_single_cell_crops(
        [data.paths[i] for i in sel], pre["size"], pre["single_cell"]["center_crop_fraction"]
    )
    y = y[sel]
    res = classify_with_progress(model, crops, "evaluate", speed=a.speed, seed=a.seed)
    m = classification_metrics(y, res.pred, res.probs, res.p_correct, model.classes)
    m["unet_calls_per_cell"] = float(res.unet_calls.mean()) if len(res) else 0.0
    m["cells_per_second"] = len(res) / max(res.seconds, 1e-9)
    m["selective_accuracy_at_p_correct_0.95"] = m["selective_accuracy_p_correct_0.95"]
    m.update(flag_shares(res.pred == y, res.flagged))
    m["model"] = model.short_id()
    m["speed"] = a.speed
    m["device"] = str(model.device)
    m["backend"] = backend_name(model)
    if a.ood:
        from ..io.images import IMAGE_SUFFIXES

        root = Path(a.ood)
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"--ood {root}: no images found")
        ood = load_single_cell_crops(files, pre["size"], pre["single_cell"]["center_crop_fraction"])
        r_ood = classify_with_progress(model, ood, "evaluate --ood", speed=a.speed, seed=a.seed)
        m["anomaly_auroc"] = auroc(res.anomaly, r_ood.anomaly)
        m["sensitivity_at_specificity_0.96"] = sensitivity_at_specificity(res.anomaly, r_ood.anomaly, 0.96)
        m["n_ood"] = len(files)
    write_json(out / "metrics.json", m)
    _write_predictions(out / "predictions.csv", [data.paths[i] for i in sel], res, model, a, truth=y)
    if a.ood:
        _write_predictions(out / "ood_predictions.csv", files, r_ood, model, a)
    confusion_png(np.array(m["confusion_matrix"]), model.classes, out / "confusion_matrix.png")
    reliability_png(res.probs.max(axis=1), (res.pred == y).astype(float), out / "reliability_diagram.png")
    keys = (
        "n",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "ece",
        "unet_calls_per_cell",
        "cells_per_second",
        "anomaly_auroc",
        "sensitivity_at_specificity_0.96",
    )
    print(json.dumps({k: m[k] for k in keys if k in m}, indent=1))
    return 0


def cmd_generate(a) -> int:
    from ..generate.export import already_written, write_generated
    from ..generate.sampling import GenerateParams, iter_generate
    from ..model.registry import get_model

    if a.n < 1:
        raise InputError("-n must be at least 1")
    model = get_model(a.model, device=device_arg(a.device))  # a bad model or device: no folder made
    out = out_dir(a.out)
    classes = list(range(len(model.classes))) if a.cls.lower() == "all" else [model.class_index(a.cls)]
    ids = [c for c in classes for _ in range(a.n)]
    seeds = [a.seed + i for i in range(len(ids))]
    params = GenerateParams(steps=a.steps, guidance=a.guidance, scheduler=a.scheduler)
    records = [
        {"class": model.classes[c], "seed": s, **params.to_dict(), "model": model.short_id()}
        for c, s in zip(ids, seeds, strict=True)
    ]
    # batch by batch (the sampler's own batches, so the images are the same), each written when done:
    # an interrupted run keeps its finished cells, and run again it skips the cells already there
    t0, made, kept = time.perf_counter(), 0, 0
    bar = progress(None, total=len(ids) * params.steps, desc="generate")
    for start in range(0, len(ids), params.batch_size):
        part = slice(start, start + params.batch_size)
        if all(already_written(out, r) for r in records[part]):
            kept += len(records[part])
            bar.update(len(records[part]) * params.steps)
            continue
        images, base = None, bar.n
        for item in iter_generate(model, ids[part], seeds[part], params):
            if isinstance(item, tuple):
                bar.n = base + item[0]
                bar.refresh()
            else:
                images = item
        write_generated(out, images, records[part])
        made += len(images)
    bar.close()
    dt = time.perf_counter() - t0
    again = f"; {kept} already there" if kept else ""
    rate = f" ({dt / made:.2f} s per cell)" if made else ""
    print(f"generated {made} cells in {dt:.1f} s{rate}{again} → {out}")
    return 0


def cmd_evaluate_generation(a) -> int:
    from ..io.atomic import write_json
    from ..io.datasets import load_single_cell_crops, map_classes, read_labelled
    from ..model.registry import get_model

    out = out_dir(a.out)
    model = get_model(a.model)
    gen = read_labelled(a.generated)
    y = map_classes(gen.classes, model.classes, where=a.generated)
    size = model.size
    crops = load_single_cell_crops(gen.paths, size, 1.0)  # generated images are already model crops
    res = classify_with_progress(model, crops, "classify generated", speed="balanced")
    per_class = {model.classes[c]: float((res.pred[y == c] == c).mean()) for c in np.unique(y)}
    m = {
        "n": len(y),
        "generative_classifier_agreement": float((res.pred == y).mean()),
        "generative_classifier_agreement_per_class": per_class,
        "model": model.short_id(),
    }
    if a.train_data:
        real = read_labelled(a.train_data, split=a.split)
        pre = model.metadata.preprocessing
        real_crops = load_single_cell_crops(real.paths, size, pre["single_cell"]["center_crop_fraction"])
        rc = real_crops.reshape(len(real), -1)
        g = crops.reshape(len(crops), -1).astype(np.float32)
        r = rc.astype(np.float32)
        d = ((g**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * g @ r.T).clip(0) ** 0.5 / np.sqrt(
            g.shape[1]
        )
        nn = d.min(axis=1)
        # reference: distance from real cells to their nearest *other* real cell
        sub = r[: min(500, len(r))]
        dr = ((sub**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * sub @ r.T).clip(0) ** 0.5 / np.sqrt(
            g.shape[1]
        )
        dr[np.arange(len(sub)), np.arange(len(sub))] = np.inf
        m["memorisation"] = {
            "median_nn_distance_generated_to_train": float(np.median(nn)),
            "median_nn_distance_train_to_train": float(np.median(dr.min(axis=1))),
            "share_closer_than_5th_percentile_of_real": float(
                (nn < np.quantile(dr.min(axis=1), 0.05)).mean()
            ),
        }
        from ..evaluate.generation import feature_distances

        known = {c.lower() for c in model.classes}
        keep = np.array([c.strip().lower() in known for c in real.classes])
        ry = map_classes([c for c, k in zip(real.classes, keep, strict=True) if k], model.classes)
        fd = feature_distances(model, real_crops[keep], ry, crops, y)
        m["feature_distance"] = {
            "method": "Frechet distance of diffusion-UNet bottleneck features (t=50, null label), 8 PCA dims",
            "per_class": fd,
            "mean_generated_vs_real": float(np.mean([v["generated_vs_real"] for v in fd.values()]))
            if fd
            else None,
            "mean_real_subset_vs_rest": float(np.mean([v["real_subset_vs_rest"] for v in fd.values()]))
            if fd
            else None,
        }
    write_json(out / "metrics.json", m)
    print(json.dumps(m, indent=1))
    return 0
