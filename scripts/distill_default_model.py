"""Distil the shipped default model (``pbc32``) into a narrower, faster UNet.

Uses the crops cache of ``scripts/train_default_model.py prepare`` (PBC train split, the
calibration hold-out excluded) and the shipped model as the teacher.

Usage::

    python scripts/distill_default_model.py run --cache runs/pbc_cache.npz --out runs/distill/s16
        [--widths 16,32,64] [--steps 20000] [--max-seconds 7200] [--device cuda] [--resume]
        [--lr 1e-3] [--min-lr 1e-5] [--contrast-weight 9] [--class-weight 0]
        [--init-from OTHER_RUN]
    python scripts/distill_default_model.py probe --cache runs/pbc_cache.npz --out runs/distill/s16
    python scripts/distill_default_model.py finish --cache runs/pbc_cache.npz --out runs/distill/s16 [--fit-engine]

``finish`` makes the student usable by the classifier: it copies the teacher's engine settings
(timesteps, weights, paired test) into the student's metadata, refits temperature, P(correct) and
anomaly profile on the student's own (PyTorch, float32) errors of the calibration hold-out, writes
the int8 UNet and refits the same on the int8 student's errors (``scripts/quantize_default_model.py
--recalibrate``), which also measures PBC val. The teacher's ``fast`` / ``accurate`` preset constants
are not copied; fit the student's own with ``scripts/calibrate_presets.py``. A student trained with a
class weight has other error spreads than its teacher (its paired test, fed the teacher's scales,
drops classes too early): give it ``--fit-engine``.

The shipped ``pbc32-fast`` (widths 16,32,64) came from three runs on this 2-core CPU, each
starting from the one before (``--init-from``): ~3,000 plain steps (``--contrast-weight 0 --min-lr 0``,
learning rate 1e-3), 2,795 contrast steps (the default contrast weight 9, constant 1e-3), and 1,996
steps with the rate falling from 5e-4 to 1e-5 (``--lr 5e-4 --min-lr 1e-5 --steps 2000``); then
``finish``, ``scripts/calibrate_presets.py --backend int8 --speeds accurate fast --validate`` and the
same with ``--backend torch``, and the folder copied (without ``checkpoints/``) to
``src/napari_cytodiffusion/data/models/pbc32-fast`` with its metadata name set to ``pbc32-fast``. On a
GPU, one run from scratch with ``--device cuda --batch-size 256`` and the decay is the obvious recipe.

``probe`` is a quick check during a run: the calibration hold-out (256 cells, stratified) is
classified with the full class set at six timesteps by the teacher and by the student's
current EMA weights (from the checkpoint), with the same noise; it prints both accuracies and
their agreement.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_cytodiffusion.model.architecture import parse_widths
from napari_cytodiffusion.model.distill import DistillConfig, distill
from napari_cytodiffusion.model.registry import get_model
from napari_cytodiffusion.model.train import TrainingData

PROBE_TIMESTEPS = [570, 450, 330, 690, 210, 840]


def _errors(unet, x0, ac, n_classes: int) -> np.ndarray:
    """(N, C) summed errors over PROBE_TIMESTEPS (the classifier's engine, full grid, same noise)."""
    from napari_cytodiffusion.classify.engine import EngineConfig, diffusion_errors

    cfg = EngineConfig(timesteps=PROBE_TIMESTEPS, adaptive=False, batch_size=128)
    return diffusion_errors(unet, ac, x0, n_classes, cfg).errors.sum(axis=2)


def probe(cache: Path, out: Path, n: int = 256) -> None:
    import torch

    from napari_cytodiffusion.model.architecture import build_unet

    z = np.load(cache, allow_pickle=False)
    imgs, labels = z["cal_images"], z["cal_labels"]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.permutation(len(labels))[:n])
    x0 = torch.from_numpy(imgs[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = labels[idx]
    teacher = get_model(None, device="cpu")
    ac = teacher.alphas_cumprod()
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    student = build_unet(len(teacher.classes), state["config"]["arch"])
    student.load_state_dict(state["ema"])
    student.eval()
    t0 = time.perf_counter()
    cached = out / "probe_teacher.npz"  # the teacher's errors do not change during a run
    if cached.is_file() and len(np.load(cached)["errors"]) == n:
        e_t = np.load(cached)["errors"]
    else:
        e_t = _errors(teacher.unet.eval(), x0, ac, len(teacher.classes))
        np.savez(cached, errors=e_t)
    e_s = _errors(student, x0, ac, len(teacher.classes))
    p_t, p_s = e_t.argmin(1), e_s.argmin(1)

    def bal(p):
        return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))

    print(
        {
            "step": int(state["step"]),
            "teacher_acc": round(float(np.mean(p_t == y)), 4),
            "student_acc": round(float(np.mean(p_s == y)), 4),
            "teacher_bal": round(bal(p_t), 4),
            "student_bal": round(bal(p_s), 4),
            "agreement": round(float(np.mean(p_t == p_s)), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        },
        flush=True,
    )


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finish(cache: Path, out: Path, fit_engine: bool = False) -> None:
    import copy
    import os

    from napari_cytodiffusion.model.folder import read_metadata, write_metadata
    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

    teacher = get_model(None, device="cpu")
    meta = read_metadata(out)
    if meta.training.get("distilled_from", {}).get("content_hash") != teacher.metadata.content_hash:
        raise SystemExit(f"{out} was not distilled from the shipped default model")
    cal = copy.deepcopy(teacher.metadata.calibration)
    cal.pop("presets", None)
    meta.calibration = cal
    write_metadata(out, meta)
    before = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = "torch"  # the float32 calibration is fitted on PyTorch errors
    t0 = time.perf_counter()
    try:
        if fit_engine:  # the student's own timestep order, weights, scales and test threshold
            _script("calibrate_default_model").main(["--model", str(out), "--cache", str(cache)])
        else:  # the teacher's engine; temperature, P(correct), anomaly refitted on the student's errors
            from napari_cytodiffusion.classify.calibration import recalibrate
            from napari_cytodiffusion.model.folder import load_model

            z = np.load(cache, allow_pickle=False)
            student = load_model(out, device="cpu")
            remap = np.array([student.classes.index(str(c)) for c in z["classes"]])
            new, summary = recalibrate(student, z["cal_images"], remap[z["cal_labels"]])
            new["engine_from_teacher"] = teacher.metadata.content_hash
            meta = read_metadata(out)
            meta.calibration = new
            meta.validation["calibration_cells"] = summary
            write_metadata(out, meta)
            print({"float32_calibration": summary}, flush=True)
    finally:
        if before is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = before
    print({"float32_calibration_seconds": round(time.perf_counter() - t0)}, flush=True)
    _script("quantize_default_model").main(["--model", str(out), "--recalibrate", str(cache)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cache", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--widths", default="16,32,64")
    r.add_argument(
        "--steps",
        type=int,
        default=None,
        help="total steps (default 20000); with --resume the run's new total (default: the checkpoint's)",
    )
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--labels-per-cell", type=int, default=4)
    r.add_argument("--lr", type=float, default=DistillConfig.lr)
    r.add_argument(
        "--min-lr",
        type=float,
        default=DistillConfig.min_lr,
        help="end of the cosine decay of the learning rate; 0 or less keeps it constant",
    )
    r.add_argument("--contrast-weight", type=float, default=DistillConfig.contrast_weight)
    r.add_argument(
        "--class-weight",
        type=float,
        default=DistillConfig.class_weight,
        help="weight of the cross-entropy of the per-class errors (every cell under every class)",
    )
    r.add_argument("--init-from", default=None, help="another run's folder to start from")
    r.add_argument("--max-seconds", type=float, default=None)
    r.add_argument("--device", default=None)
    r.add_argument("--resume", action="store_true")
    p = sub.add_parser("probe")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=256)
    f = sub.add_parser("finish")
    f.add_argument("--cache", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument(
        "--fit-engine",
        action="store_true",
        help="fit the student's own engine (timesteps, weights, scales, paired-test threshold; "
        "scripts/calibrate_default_model.py, ~1.2 M UNet evaluations) instead of the teacher's",
    )
    args = ap.parse_args(argv)
    if args.cmd == "finish":
        finish(args.cache, args.out, args.fit_engine)
        return 0
    if args.cmd == "probe":
        probe(args.cache, args.out, args.n)
        return 0
    z = np.load(args.cache, allow_pickle=False)
    teacher = get_model(None, device="cpu")
    data = TrainingData(
        images=z["train_images"],
        labels=z["train_labels"],
        classes=[str(c) for c in z["classes"]],
        description=dict(teacher.metadata.training.get("data", {})),
    )
    cfg = DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        labels_per_cell=args.labels_per_cell,
        lr=args.lr,
        min_lr=args.min_lr if args.min_lr and args.min_lr > 0 else None,
        contrast_weight=args.contrast_weight,
        class_weight=args.class_weight,
        init_from=args.init_from,
        max_seconds=args.max_seconds,
        device=args.device,
    )
    widths = parse_widths(args.widths)
    name = teacher.metadata.name + "-distilled-" + "x".join(str(w) for w in widths)
    last = None
    for ev in distill(teacher, data, args.out, widths, cfg, resume=args.resume, metadata={"name": name}):
        if ev.get("done") or ev["step"] % 100 == 0:
            print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in ev.items()}, flush=True)
        last = ev
    return 0 if last else 1


if __name__ == "__main__":
    sys.exit(main())
