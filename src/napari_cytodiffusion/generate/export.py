"""Writing generated cells: one PNG per cell in a folder per class, its recipe in a JSON file beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def write_generated(
    folder: str | os.PathLike, images: np.ndarray, records: list[dict[str, Any]]
) -> list[Path]:
    """Write ``images[i]`` as ``folder/CLASS/CLASS_seedS.png`` with ``records[i]`` as ``….json`` beside it.

    ``records[i]`` holds at least ``class`` and ``seed`` (and what else makes the cell: sampler, steps,
    guidance, model). A cell of an earlier, different generation is never replaced: when the name is
    taken by a file whose recipe differs, the new cell takes the next free name (``CLASS_seedS-2.png``,
    ...). The same generation written again replaces its own files, which hold the same image.
    Files are written atomically. Returns the PNG paths.
    """
    from PIL import Image

    from ..io.atomic import write_json, write_with

    if len(images) != len(records):
        raise ValueError(f"{len(images)} images but {len(records)} records")
    out = []
    for image, record in zip(images, records, strict=True):
        cls = str(record["class"])
        path = _free_path(Path(folder) / cls / f"{cls}_seed{record['seed']}.png", record)
        write_with(path, lambda tmp, im=image: Image.fromarray(np.asarray(im)).save(tmp, format="PNG"))
        write_json(path.with_suffix(".json"), record)
        out.append(path)
    return out


def already_written(folder: str | os.PathLike, record: dict[str, Any]) -> bool:
    """Whether ``folder`` holds this very cell already (a PNG whose recipe JSON equals ``record``)."""
    cls = str(record["class"])
    path = _free_path(Path(folder) / cls / f"{cls}_seed{record['seed']}.png", record)
    return path.is_file() and _recorded(path) == json.loads(json.dumps(record, default=str))


def _free_path(path: Path, record: dict[str, Any]) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``, ... when a different cell is already there."""
    candidate, n = path, 1
    while candidate.exists() or candidate.with_suffix(".json").exists():
        if _recorded(candidate) == json.loads(json.dumps(record, default=str)):
            return candidate  # this very cell, written before
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _recorded(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None  # no readable recipe: not ours to replace
