"""A model folder in one line: what it is, what it learnt from, how well it measured.

Read from the folder's metadata (and the weights file's header for the parameter count) without
loading any weights, so a widget can show it whenever the chosen model changes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from ..errors import ModelError


def _short(text: Any) -> str:
    """``"PBC (Acevedo et al., …)"`` → ``"PBC"``."""
    return str(text or "").split(" (")[0].strip()


def parameter_count(weights: str | os.PathLike) -> int:
    """Number of parameters in a safetensors file, from its header (no tensor is read)."""
    path = Path(weights)
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                raise ModelError(f"{path}: not a safetensors file")
            header = json.loads(fh.read(n))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    total = 0
    for key, entry in header.items():
        if key != "__metadata__":
            count = 1
            for d in entry.get("shape", []):
                count *= int(d)
            total += count
    return total


def _validation_text(meta: Any) -> str:
    """The stored validation figure: the model's own, else its int8 network's."""
    validation, network = meta.validation or {}, ""
    if "balanced_accuracy" not in validation:
        validation, network = (meta.extra.get("int8") or {}).get("validation") or {}, ", int8 network"
    if "balanced_accuracy" not in validation:
        return "not validated"
    where = _short(validation.get("dataset")) or "validation"
    n = validation.get("n")
    cells = f", {int(n):,} cells" if n else ""
    return f"{where}: balanced accuracy {float(validation['balanced_accuracy']):.3f}{cells}{network}"


def model_classes(spec: str | os.PathLike | None = None) -> list[str]:
    """Class names of a model or adapter, from its metadata alone (no weights are read).

    Raises
    ------
    ModelError
        When the folder is not a readable model or adapter folder.
    """
    from ..adapt.adapter import is_adapter, read_adapter_metadata
    from .folder import read_metadata
    from .registry import resolve_model

    folder = resolve_model(spec, download=False)
    if is_adapter(folder):
        return [str(c) for c in read_adapter_metadata(folder)["classes"]]
    return list(read_metadata(folder).classes)


def model_summary(spec: str | os.PathLike | None = None) -> str:
    """One line describing a model or LoRA adapter folder, or a model by name.

    Name, classes, size, training data and licence, and the validation figure stored with it
    (for an adapter: its base model, the cells it was fine-tuned on and how it was calibrated).

    ``spec`` is what :func:`~napari_cytodiffusion.model.registry.resolve_model` takes; this
    never downloads (an official model not cached yet is a ``ModelError``).

    Raises
    ------
    ModelError
        When the folder is not a readable model or adapter folder.
    """
    from ..adapt.adapter import is_adapter, read_adapter_metadata
    from .folder import WEIGHTS_FILE, read_metadata
    from .registry import resolve_model

    folder = resolve_model(spec, download=False)
    if is_adapter(folder):
        meta = read_adapter_metadata(folder)
        counts = (meta.get("finetune") or {}).get("class_counts") or {}
        calibrated = (meta.get("validation") or {}).get("calibration_cells")
        parts = [
            f"{meta.get('name') or folder.name}: LoRA adapter of {meta['base_model'].get('name', '?')}",
            f"{len(meta['classes'])} classes",
            f"fine-tuned on {sum(int(v) for v in counts.values())} cells",
            f"recalibrated on {int(calibrated)} held-out cells" if calibrated else "base model's calibration",
        ]
        return " · ".join(parts)
    meta = read_metadata(folder)
    training = meta.training or {}
    data = training.get("data") or {}
    dataset = _short(training.get("dataset") or data.get("dataset")) or "unknown data"
    licence = training.get("licence") or data.get("licence")
    weights = folder / "unet" / WEIGHTS_FILE
    size = f"{parameter_count(weights) / 1e6:.2f} M parameters" if weights.is_file() else None
    distilled = (training.get("distilled_from") or {}).get("name")
    parts = [
        f"{meta.name}: {meta.n_classes} classes",
        size,
        f"distilled from {distilled}" if distilled else None,
        f"trained on {dataset}" + (f" ({licence})" if licence else ""),
        _validation_text(meta),
    ]
    return " · ".join(p for p in parts if p)
