"""Exports with an audit trail: cells CSV, summary JSON and labels TIFF, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Generator
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError
from .io.atomic import write_json, write_with

AUDIT_PACKAGES = ("napari-cytodiffusion", "torch", "diffusers", "cellpose", "numpy", "napari")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in AUDIT_PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["napari-cytodiffusion"] = __version__
    return out


def audit_trail(
    model=None,
    parameters: dict[str, Any] | None = None,
    input_path: str | os.PathLike | None = None,
    input_array: np.ndarray | None = None,
) -> dict[str, Any]:
    """Who/what/when of a result: model and hash, parameters, versions, input and its hash."""
    trail: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": package_versions(),
        "python": platform.python_version(),
        "parameters": parameters or {},
    }
    if model is not None:
        trail["model"] = {
            "name": model.metadata.name,
            "content_hash": model.metadata.content_hash,
            "path": str(model.path) if model.path else None,
        }
    if input_path is not None and Path(input_path).is_file():
        trail["input"] = {"path": str(Path(input_path).resolve()), "sha256": file_sha256(input_path)}
    elif input_array is not None:
        arr = np.ascontiguousarray(input_array)
        trail["input"] = {
            "array_shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    return trail


def write_cells_csv(table, path: str | os.PathLike, audit: dict[str, Any] | None = None) -> Path:
    """Write the cells table as CSV; the audit trail goes to ``PATH.audit.json`` beside it."""
    path = Path(path)
    write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    if audit is not None:
        write_json(path.with_name(path.name + ".audit.json"), audit)
    return path


def write_summary_json(
    summary: dict[str, Any], path: str | os.PathLike, audit: dict[str, Any] | None = None
) -> Path:
    return write_json(path, {**summary, "audit": audit or {}})


def write_labels_tiff(
    labels: np.ndarray, path: str | os.PathLike, audit: dict[str, Any] | None = None
) -> Path:
    """uint32 labels as a compressed TIFF with the audit trail (JSON) as its description."""
    import tifffile

    desc = json.dumps({"napari-cytodiffusion": audit or {}}, default=str)
    return write_with(
        path,
        lambda tmp: tifffile.imwrite(
            tmp,
            np.asarray(labels, np.uint32),
            description=desc,
            compression="zlib",
            metadata=None,
            # a stack of 3 or 4 planes is planes, not the colour channels of one RGB(A) image
            photometric="minisblack",
        ),
    )


def keep_image(path: str | os.PathLike, image: np.ndarray) -> Path | None:
    """Save an image that has no file of its own (a napari layer made in Python) as a lossless TIFF.

    Beside a result, as ``STEM.tif``, it is how the result finds its image again: reopening it
    for review and the review page's cell pictures look there for an image with the pixels the
    audit trail hashed. A different file already at ``path`` is never replaced (None is returned);
    the same pixels there are kept as they are.
    """
    import tifffile

    from .io.images import read_image

    path, image = Path(path), np.ascontiguousarray(image)
    if path.exists():
        try:
            same = np.array_equal(read_image(path), image)
        except InputError:
            same = False
        return path if same else None
    return write_with(path, lambda tmp: tifffile.imwrite(tmp, image, compression="zlib", metadata=None))


def read_labels_tiff(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        arr = tf.asarray()
        desc = tf.pages[0].description
    try:
        audit = json.loads(desc).get("napari-cytodiffusion", {})
    except (json.JSONDecodeError, AttributeError):
        audit = {}
    return arr, audit


def iter_export_result(
    folder: str | os.PathLike,
    stem: str,
    table,
    summary: dict[str, Any],
    labels: np.ndarray,
    image: np.ndarray,
    model,
    parameters: dict[str, Any],
    *,
    input_path: str | os.PathLike | None = None,
    report: bool = True,
) -> Generator[tuple[int, int, str], None, dict[str, Path]]:
    """Export one reviewed smear result; yields ``(done, total, what)``, returns the files written.

    Writes ``STEM_cells.csv``, ``STEM_summary.json`` and ``STEM_labels.tif`` with their audit trail
    (what ``analyze`` writes, so the folder reopens for review and feeds ``report``); where the user
    corrected cells, their crops as a training set (``corrections/CLASS/STEM_cellN.png`` with
    ``corrections/labels.csv``, what ``train --data`` and ``finetune`` read) and the agreement
    between the user and the model (``STEM_agreement.json`` and ``.png``); then, with ``report``,
    the folder's review page (``report.html``, over every result exported to it).

    Parameters
    ----------
    folder
        Where the files go (made if missing); files of the same ``stem`` are replaced atomically.
    stem
        Name of the result's files.
    table
        The cells table with the user's ``corrected_class`` ("" where not corrected).
    summary
        The smear's summary, recounted with the corrections.
    labels, image
        The smear's labels and image (the crops of corrected cells are cut from them).
    model
        The model that classified the cells (its name and hash go into the audit trail).
    parameters
        The run's parameters (for the audit trail).
    input_path
        The image's file, when it came from one: its path and sha256 are recorded, so the result
        reopens with its image and the review page shows the cells. Else the array's hash is
        recorded and the image is kept beside the result as ``STEM.tif`` (see :func:`keep_image`),
        which serves the same.
    report
        Also write the folder's review page.
    """
    from .io.atomic import write_with
    from .pipeline import run_crops

    folder = Path(folder)
    corrected = table[table["corrected_class"].fillna("").astype(str) != ""]
    total = 2 + len(corrected) + int(report)
    yield 0, total, "export"
    audit = audit_trail(model, parameters, input_path=input_path, input_array=image)
    out = {
        "cells": write_cells_csv(table, folder / f"{stem}_cells.csv", audit),
        "summary": write_summary_json(summary, folder / f"{stem}_summary.json", audit),
        "labels": write_labels_tiff(labels, folder / f"{stem}_labels.tif", audit),
    }
    if "path" not in audit.get("input", {}):  # an image with no file: keep a copy beside the result
        kept = keep_image(folder / f"{stem}.tif", image)
        if kept is not None:
            out["image"] = kept
    yield 1, total, "export"
    if len(corrected):
        from PIL import Image

        from .evaluate.agreement import agreement_png, agreement_report

        others = _other_corrections(folder / "corrections", stem)  # read first: a bad table stops here
        crops = run_crops(image, labels, model.metadata.preprocessing, summary, table, corrected)
        rows = []
        for i, (crop, (_, row)) in enumerate(zip(crops, corrected.iterrows(), strict=True)):
            rel = Path(row["corrected_class"]) / f"{stem}_cell{int(row['label'])}.png"
            write_with(
                folder / "corrections" / rel,
                lambda tmp, c=crop: Image.fromarray(c).save(tmp, format="PNG"),
            )
            rows.append({"path": str(rel), "class": row["corrected_class"]})
            yield 2 + i, total, "corrected cells"
        out["corrections"] = _write_corrections_table(folder / "corrections", stem, others, rows)
        agreement = agreement_report(table)
        out["agreement"] = write_json(folder / f"{stem}_agreement.json", agreement)
        agreement_png(agreement, folder / f"{stem}_agreement.png")
    elif (folder / "corrections" / "labels.csv").is_file():  # corrections cleared since the last export
        others = _other_corrections(folder / "corrections", stem)
        out["corrections"] = _write_corrections_table(folder / "corrections", stem, others, [])
        for stale in (folder / f"{stem}_agreement.json", folder / f"{stem}_agreement.png"):
            stale.unlink(missing_ok=True)
    if report:
        from .report import iter_report

        yield total - 1, total, "review page"
        out["report"] = yield from iter_report(folder)
    yield total, total, "export"
    return out


def _own_pictures(stem: str):
    """Whether a file name is one of this smear's correction pictures (``STEM_cellN.png``)."""
    import re

    return re.compile(rf"{re.escape(stem)}_cell\d+\.png").fullmatch


def _other_corrections(folder: Path, stem: str):
    """The rows of ``folder/labels.csv`` that other smears exported to the same folder wrote."""
    import pandas as pd

    path = folder / "labels.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["path", "class"])
    try:
        rows = pd.read_csv(path, dtype=str)[["path", "class"]]
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path} to add to it: {exc}") from exc
    mine = _own_pictures(stem)
    return rows[~rows["path"].map(lambda p: bool(mine(Path(str(p)).name)))]


def _write_corrections_table(folder: Path, stem: str, others, rows: list[dict[str, str]]) -> Path:
    """``labels.csv``: the other smears' rows, then this smear's, which replace its earlier ones.

    This smear's pictures from an earlier export that are no longer corrections (the user has
    changed the cell's class since) are removed, so the folder of class sub-folders agrees too.
    """
    import pandas as pd

    mine = _own_pictures(stem)
    now = {str(Path(r["path"])) for r in rows}
    for old in folder.glob("*/*.png"):
        if mine(old.name) and str(old.relative_to(folder)) not in now:
            old.unlink()
    mine_now = pd.DataFrame(rows, columns=["path", "class"])
    table = pd.concat([others, mine_now], ignore_index=True) if len(others) else mine_now
    return write_cells_csv(table, folder / "labels.csv")
