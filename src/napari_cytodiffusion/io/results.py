"""Reading back what ``analyze``, ``classify --labels``, ``demo`` or the widget's export wrote for a smear.

One smear's outputs share a stem: ``NAME_summary.json``, ``NAME_cells.csv`` and ``NAME_labels.tif``
(``summary.json``, ``cells.csv`` and ``labels.tif`` for ``demo``). The summary's audit trail names
the image that was analysed (path and sha256), the model (name, content hash, folder) and the
parameters, so a result can be opened again, checked by eye and corrected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

_SUFFIXES = ("_summary.json", "_cells.csv", "_labels.tif")
#: text columns of the cells table that are empty for some cells (read back as NaN from CSV)
_TEXT_COLUMNS = ("class", "class_by_appearance", "corrected_class", "flag_reason")
_BOOL_COLUMNS = ("touches_border", "classified", "flagged", "size_implausible")


@dataclass
class SavedSmear:
    """A smear's saved outputs: the result, and where its image and model were."""

    result: Any  # pipeline.SmearResult
    stem: str
    image_path: Path | None  #: the analysed image's path as the audit recorded it (may be gone)
    image_sha256: str | None  #: of the file, or of the pixel array when the image was an array
    model: dict[str, Any]  #: the audit's model entry: name, content_hash, path
    folder: Path | None = None  #: where the result's files are
    image_was_array: bool = False  #: the audit hashed an array (demo, a napari layer), not a file


def output_files(path: str | os.PathLike) -> tuple[str, dict[str, Path]]:
    """The stem and the three files of the smear output that ``path`` (any one of them) belongs to."""
    path = Path(path)
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            files = {s.strip("_").split(".")[0]: path.with_name(stem + s) for s in _SUFFIXES}
            return stem, files
    if name in ("summary.json", "cells.csv", "labels.tif"):  # demo
        return "", {s.split(".")[0]: path.with_name(s) for s in ("summary.json", "cells.csv", "labels.tif")}
    raise InputError(
        f"{path.name}: not a smear result (expected NAME_summary.json, NAME_cells.csv or NAME_labels.tif)"
    )


def clean_cells_table(table):
    """A cells table read back from CSV, its columns as written: empty text cells ``""`` (not NaN),
    flags as booleans (not objects)."""
    for col in _TEXT_COLUMNS:
        if col in table:
            table[col] = table[col].astype(object).fillna("").astype(str)
    for col in _BOOL_COLUMNS:
        if col in table:
            table[col] = table[col].astype(object).fillna(False).astype(bool)
    return table


def read_smear_outputs(path: str | os.PathLike) -> SavedSmear:
    """Read one smear's saved result (give any of its three files).

    Raises :class:`InputError` when a file is missing or unreadable, or when the cells table and
    the labels do not belong together.
    """
    import pandas as pd

    from ..export import read_labels_tiff
    from ..pipeline import SmearResult

    stem, files = output_files(path)
    for kind, f in files.items():
        if not f.is_file():
            raise InputError(f"{f.name} is missing beside {Path(path).name}: {kind} of the result")
    try:
        summary = json.loads(files["summary"].read_text(encoding="utf-8"))
        labels, _ = read_labels_tiff(files["labels"])
        table = pd.read_csv(files["cells"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read the result {stem or files['summary'].name}: {exc}") from exc
    if not isinstance(summary, dict) or "n_cells" not in summary:
        raise InputError(f"{files['summary'].name} is not a smear summary")
    if labels.ndim != 2:
        raise InputError(f"{files['labels'].name}: expected 2D labels, got shape {labels.shape}")
    if "label" not in table:
        raise InputError(f"{files['cells'].name} has no 'label' column")
    present = np.unique(labels)
    missing = np.setdiff1d(table["label"].to_numpy(), present)
    if missing.size:
        raise InputError(
            f"{files['cells'].name} and {files['labels'].name} do not belong together: "
            f"{missing.size} cells of the table are not in the labels"
        )
    table = clean_cells_table(table)
    audit = summary.pop("audit", {}) or {}
    source = audit.get("input") or {}
    result = SmearResult(
        labels=labels.astype(np.uint32),
        table=table,
        summary=summary,
        parameters=audit.get("parameters") or {},
    )
    return SavedSmear(
        result=result,
        stem=stem or "smear",
        image_path=Path(source["path"]) if source.get("path") else None,
        image_sha256=source.get("sha256"),
        model=audit.get("model") or {},
        folder=files["summary"].parent,
        image_was_array="array_shape" in source,
    )


def saved_model(saved: SavedSmear, fallback: str | None = None):
    """The model a saved result was made with, and a warning when only a stand-in could be loaded.

    Tried in order: the folder the audit recorded, the registry name, then ``fallback`` (the
    model chosen in the widget). The warning is ``None`` when the loaded model's content hash is
    the recorded one.
    """
    from ..errors import ModelError
    from ..model.registry import get_model

    want = saved.model.get("content_hash")
    tried = []
    for spec in (saved.model.get("path"), saved.model.get("name"), fallback):
        if not spec or spec in tried:
            continue
        tried.append(spec)
        try:
            model = get_model(spec)
        except ModelError:
            continue
        if want and model.metadata.content_hash != want:
            return model, (
                f"the result was made with model {saved.model.get('name')} ({want[:12]}), not found here; "
                f"shown with {model.short_id()}: probabilities are the saved ones, new crops use this model"
            )
        return model, None
    raise InputError(f"no model to show the result with (tried {', '.join(map(str, tried)) or 'none'})")


def _array_sha256(image: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _beside(saved: SavedSmear) -> Path | None:
    """An image saved beside a result whose audit hashed an array: the one with those very pixels."""
    from .images import IMAGE_SUFFIXES, read_image

    if saved.folder is None or not saved.image_sha256:
        return None
    stems = [saved.stem, "smear"] if saved.stem != "smear" else ["smear"]  # demo writes smear.png
    for stem in stems:
        for suffix in sorted(IMAGE_SUFFIXES):
            f = saved.folder / f"{stem}{suffix}"
            if f.is_file() and not f.name.endswith("_labels.tif"):
                try:
                    if _array_sha256(read_image(f)) == saved.image_sha256:
                        return f
                except InputError:
                    continue
    return None


def saved_image_path(saved: SavedSmear, image_path: str | os.PathLike | None = None) -> Path | None:
    """Where a result's image is looked for: ``image_path`` if given, the recorded path, else beside it."""
    return Path(image_path) if image_path else saved.image_path or _beside(saved)


def saved_image(saved: SavedSmear, image_path: str | os.PathLike | None = None):
    """The analysed image, and a warning when it is not the file the result was computed from.

    ``image_path`` overrides the recorded path (the image was moved). A result computed from an
    array (``demo``, a napari layer) records no path: an image beside it with the same pixels
    (``smear.png`` for ``demo``, ``NAME.png``) is used. Raises :class:`InputError` when there is no
    image, or when its size does not match the labels.
    """
    from ..export import file_sha256
    from .images import read_image

    path = saved_image_path(saved, image_path)
    if path is None:
        raise InputError(
            "the result records no image file (it was computed from an array): give the image's path"
        )
    if not path.is_file():
        raise InputError(f"the analysed image is no longer at {path}: give its new place")
    image = read_image(path)
    if image.shape[:2] != saved.result.labels.shape:
        raise InputError(
            f"{path.name} is {image.shape[:2]}, the result's labels {saved.result.labels.shape}: not its image"
        )
    warning = None
    if saved.image_sha256:
        same = (
            _array_sha256(image) == saved.image_sha256
            if saved.image_was_array
            else file_sha256(path) == saved.image_sha256
        )
        if not same:
            warning = f"{path.name} has changed since it was analysed (sha256 differs)"
    return image, warning
