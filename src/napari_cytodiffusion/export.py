"""Exports with an audit trail: cells CSV, summary JSON and labels TIFF, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
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
            tmp, np.asarray(labels, np.uint32), description=desc, compression="zlib", metadata=None
        ),
    )


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
