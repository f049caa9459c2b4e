"""Store an ``evaluate`` run's figures as a model folder's validation record.

The model card (``napari-cytodiffusion models``, the widgets' model line) and the metadata's
``validation`` block should say what ``evaluate`` gives today. After a change of the engine that
moves every figure (e.g. how a cell's noise is seeded), re-run ``evaluate`` on the validation
split and record each run here::

    napari-cytodiffusion evaluate --data ../shared/data/pbc/labels.csv --split val --speed accurate \\
        --ood ../shared/data/mpidb_falciparum/crops --out runs/val_accurate
    python scripts/record_validation.py --model src/napari_cytodiffusion/data/models/pbc32 \\
        --metrics runs/val_accurate/metrics.json --dataset "PBC val split (...)" --note "..."

Where it goes is read from the run (``speed`` and ``backend`` in metrics.json): PyTorch or
float32 ONNX ``balanced`` is the top-level block (the model card's line; its ``full_grid`` and
``presets`` are kept), int8 ``balanced`` is ``extra["int8"]["validation"]``, any other run
``validation["presets"][speed][torch|int8]``; the last two are replaced whole, so no figure of an
earlier draw is left beside the new ones. The run must be of
this model (its ``model`` id) and of the whole split (no ``--limit``: pass ``--n`` to check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: figures of a run that a validation record keeps (others stay in the run); the confusion matrix
#: (true class by call, the model's class order) gives the model card its most frequent confusions
KEEP = ("n", "accuracy", "balanced_accuracy", "macro_f1", "ece", "ece_p_correct",
        "selective_accuracy_p_correct_0.95", "coverage_p_correct_0.95", "per_class_recall",
        "unet_calls_per_cell", "cells_per_second", "anomaly_auroc", "sensitivity_at_specificity_0.96",
        "n_ood", "confusion_matrix", "flagged_share_of_wrong_calls", "flagged_share_of_right_calls")  # fmt: skip


def record(meta, metrics: dict, dataset: str, note: str) -> str:
    """Write the run into ``meta`` (a ``ModelMetadata``); returns where it went."""
    backend = "int8" if metrics["backend"] == "onnx-int8" else "torch"  # float32 ONNX computes as torch
    entry = {k: metrics[k] for k in KEEP if k in metrics} | {"dataset": dataset, "measured_on": note}
    validation = dict(meta.validation or {})
    speed = metrics["speed"]
    if speed == "balanced" and backend == "torch":
        validation.update(entry)
        where = "validation (top level)"
    elif speed == "balanced":
        meta.extra.setdefault("int8", {})["validation"] = entry
        where = 'extra["int8"]["validation"]'
    else:
        presets = dict(validation.get("presets", {}))
        presets[speed] = dict(presets.get(speed, {})) | {backend: entry}
        validation["presets"] = presets
        where = f"validation.presets.{speed}.{backend}"
    meta.validation = validation
    return where


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model folder whose metadata is rewritten")
    ap.add_argument("--metrics", type=Path, required=True, help="metrics.json of an evaluate run")
    ap.add_argument("--dataset", required=True, help="what the run measured on, as the record says it")
    ap.add_argument("--note", required=True, help="how and where it was measured (command, machine, date)")
    ap.add_argument("--n", type=int, default=None, help="the split's size: refuse a run of fewer cells")
    args = ap.parse_args(argv)

    from napari_cytodiffusion.model.folder import load_model, read_metadata, write_metadata

    metrics = json.loads(args.metrics.read_text())
    model_id = load_model(args.model).short_id()
    if metrics.get("model") != model_id:
        sys.exit(f"{args.metrics} is a run of {metrics.get('model')}, not of {model_id}")
    if args.n is not None and metrics["n"] != args.n:
        sys.exit(f"{args.metrics} has {metrics['n']} cells, not the split's {args.n}")
    meta = read_metadata(args.model)
    where = record(meta, metrics, args.dataset, args.note)
    write_metadata(args.model, meta)
    print(
        f"{args.model}: {where} = balanced accuracy {metrics['balanced_accuracy']:.4f} on {metrics['n']} cells"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
