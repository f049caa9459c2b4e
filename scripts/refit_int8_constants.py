"""Refit every int8 classifier constant of a model folder on this machine, and record its numerics.

The int8 UNet's errors depend on the CPU (``model/int8_numerics.py``), so the constants fitted on
them (``extra["int8"]["classifier_calibration"]``: the ``balanced`` block and every preset in it)
must all come from one machine, and that machine's fingerprint is stored beside them
(``extra["int8"]["numerics"]``). Elsewhere the classifier then uses the float32 network.

The fit uses a full-grid int8 error dump of *all* calibration cells, made on this machine by
``benchmarks/full_grid_errors.py --int8 --views 2 --split cal --per-class 100000`` (with
``--without-null`` where no preset's anomaly profile uses the null label's gap, ``--null``)
(cell ids and noise as :func:`~napari_cytodiffusion.classify.calibration.recalibrate` draws
them). Each preset's run is replayed from it (``classify.engine.replay_errors``, the engine's
errors and calls exactly), and refitted as ``recalibrate`` does. That takes seconds instead of an
hour of runs. First, 8 of the dump's cells are run again here, and the script stops if their
errors differ: the dump must come from this machine's numerics.

A refitted anomaly profile drops its smear-platelet reference: run
``scripts/calibrate_smear_platelets.py`` afterwards.

Usage::

    python scripts/refit_int8_constants.py --model src/napari_cytodiffusion/data/models/pbc32 \\
        --cache pbc_cache.npz --errors runs/g2_cal.npz [--null balanced] [--only accurate fast]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

#: constants of a preset's block (as ``scripts/calibrate_presets.py`` stores them)
KEEP = ("temperature", "p_correct", "anomaly", "flag_below_p_correct", "n_calibration_cells",
        "p_correct_prior_strength", "calibration_accuracy")  # fmt: skip


def check_dump(model, x: np.ndarray, dump, n: int = 8) -> float:
    """Largest relative difference between the dump's errors and a run of its first cells here."""
    from napari_cytodiffusion.classify.classifier import engine_config
    from napari_cytodiffusion.classify.engine import crop_ids, diffusion_errors
    from napari_cytodiffusion.crops import to_model_tensor

    views = len(dump["timesteps"]) // len(engine_config(model).timesteps)
    cfg = engine_config(model, "full", tta=views)
    ids = dump["cell_ids"][:n]
    r = diffusion_errors(
        model.inference_unet(), model.alphas_cumprod(), to_model_tensor(x[ids]), model.metadata.n_classes,
        cfg, cell_ids=crop_ids(x[ids]),
    )  # fmt: skip
    ref = dump["errors"][:n, : model.metadata.n_classes]
    return float(np.max(np.abs(r.errors - ref) / np.abs(ref)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="crops cache with cal_* arrays")
    ap.add_argument("--errors", type=Path, required=True, help="full-grid int8 dump of all calibration cells")
    ap.add_argument(
        "--null",
        nargs="*",
        default=None,
        metavar="SPEED",
        help="presets whose anomaly profile uses the null label's gap (the engine then evaluates the null "
        "label at every unit), the others the class gaps; needs a dump with the null label (no "
        "--without-null). Default: each as its profile is now",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="SPEED",
        help="refit these presets only, keeping the others' constants (the block's stored numerics must "
        "be this machine's, so that every preset's constants still come from one machine's errors)",
    )
    args = ap.parse_args(argv)

    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

    os.environ[BACKEND_ENV] = "int8"
    from napari_cytodiffusion.classify.calibration import recalibrate_from_errors
    from napari_cytodiffusion.classify.classifier import engine_config
    from napari_cytodiffusion.classify.engine import replay_errors
    from napari_cytodiffusion.model import int8_numerics
    from napari_cytodiffusion.model.folder import load_model, read_metadata, write_metadata

    model = load_model(args.model)
    z, dump = np.load(args.cache), np.load(args.errors)
    idx = {c: i for i, c in enumerate(model.classes)}
    cal_y = np.array([idx.get(str(c), -1) for c in z["classes"]])[z["cal_labels"]]
    cal_x = z["cal_images"][cal_y >= 0]
    labels = cal_y[cal_y >= 0]
    if not np.array_equal(dump["cell_ids"], np.arange(len(labels))) or not np.array_equal(
        dump["labels"], labels
    ):
        raise SystemExit(f"{args.errors}: not a dump of all {len(labels)} calibration cells of {args.cache}")
    diff = check_dump(model, cal_x, dump)
    if diff > 1e-5:
        raise SystemExit(f"{args.errors}: its errors differ from this machine's by up to {diff:.2g}")
    print(f"dump checked against this machine on 8 cells (largest relative difference {diff:.1g})")
    meta = read_metadata(args.model)
    block = meta.extra["int8"].setdefault("classifier_calibration", {})
    speeds = ["balanced", *sorted(block.get("presets", {}))]
    c = model.metadata.n_classes
    errors = dump["errors"][:, :c]
    null = dump["errors"][:, c] if dump["errors"].shape[1] == c + 1 else None
    for option, chosen in (("--null", args.null or []), ("--only", args.only or [])):
        unknown = sorted(set(chosen) - set(speeds))
        if unknown:
            raise SystemExit(
                f"{option} {' '.join(unknown)}: the int8 block has no such preset ({', '.join(speeds)})"
            )
    if args.null and null is None:
        raise SystemExit(f"--null needs a dump with the null label; {args.errors} was made --without-null")
    if args.only:
        stored = meta.extra["int8"].get("numerics", {})
        if not int8_numerics.matches(stored, model.inference_unet(), model.size, model.metadata.n_classes):
            raise SystemExit(
                "--only: the block's constants were fitted on another machine's numerics; refit all"
            )
        speeds = [s for s in speeds if s in args.only]
    for speed in speeds:
        cfg = engine_config(model, speed, null=None if args.null is None else speed in args.null)
        if cfg.null and null is None:
            raise SystemExit(
                f"{speed}: its anomaly profile uses the null label's gap, and {args.errors} was made "
                "--without-null (name the presets to keep on it with --null, or dump with the null label)"
            )
        res = replay_errors(errors, dump["timesteps"], dump["weights"], dump["scales"], cfg, null)
        new, summary = recalibrate_from_errors(model, res, labels, speed=speed)
        new.pop("engine", None)
        if speed == "balanced":
            block.update({k: v for k, v in new.items() if k != "presets"})
            meta.extra["int8"]["calibration_cells"] = summary
        else:
            block["presets"][speed] = {k: new[k] for k in KEEP if k in new} | {"fitted_on": summary}
        print(f"{speed}: accuracy {summary['calibration_accuracy']:.4f} on {len(labels)} cells, "
              f"{res.calls.mean():.1f} calls per cell, ECE {summary['calibration_ece_after']:.3f}")  # fmt: skip
    if not args.only:  # with --only the stored numerics stand (checked above to be this machine's)
        meta.extra["int8"]["numerics"] = int8_numerics.record(
            model.inference_unet(), model.size, model.metadata.n_classes
        )
    write_metadata(args.model, meta)
    print(f"wrote {args.model}: int8 constants of {', '.join(speeds)} and this machine's numerics "
          f"{meta.extra['int8']['numerics']['host']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
