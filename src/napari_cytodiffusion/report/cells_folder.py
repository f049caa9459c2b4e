"""A report of single-cell images classified by ``classify`` (``predictions.csv``).

An analyser's export of a slide's white cells, or any folder of cell images: each image is a cell,
shown whole in the gallery of its class (no outline: there is no segmentation). The differential
and domain check are those ``classify`` wrote beside its predictions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .collect import ReportCell, ReportData, _cells, _model_info, arrange

#: what ``classify`` of single-cell images writes
PREDICTIONS = "predictions.csv"


def iter_collect_cells(
    folder: Path, *, max_per_class: int, max_review: int, picture_px: int
) -> Generator[tuple[int, int, str], None, ReportData]:
    """:func:`~napari_cytodiffusion.report.collect.iter_collect` for a folder of ``classify`` predictions."""
    import pandas as pd

    from ..differential import differential
    from ..io.results import clean_cells_table

    try:
        table = pd.read_csv(folder / PREDICTIONS)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {folder / PREDICTIONS}: {exc}") from exc
    if not {"path", "class", "p_correct"} <= set(table.columns):
        raise InputError(f"{folder / PREDICTIONS} is not a table of classify's predictions")
    audit = _read_json(folder / (PREDICTIONS + ".audit.json"))
    model, model_info = _model_info(audit, {(audit.get("model") or {}).get("content_hash")} - {None})
    classes = (
        list(model.metadata.classes)
        if model
        else [c[2:] for c in table if c.startswith("p_") and c != "p_correct"]
    )
    colours = dict(zip(model.metadata.classes, model.metadata.colours, strict=True)) if model else {}
    table = clean_cells_table(table)
    table["label"] = np.arange(1, len(table) + 1)
    table["classified"] = True
    cells = _cells("", table, classes)
    paths = [Path(p) for p in table["path"]]
    for c, p in zip(cells, paths, strict=True):
        c.image, c.label = p.name, 0  # the image is the cell: no label within it
    extra = model.metadata.extra if model else None
    shelves = arrange(cells, classes, colours, extra, max_per_class, max_review)
    classes = shelves["classes"]
    shown = {id(c) for c in shelves["review"]} | {id(c) for cs in shelves["by_class"].values() for c in cs}
    where = {id(c): p for c, p in zip(cells, paths, strict=True)}
    todo = [c for c in cells if id(c) in shown]
    missing = 0
    for i, c in enumerate(todo):
        if i % 50 == 0:
            yield i, len(todo), "pictures of the cells"
        c.picture = _picture(where[id(c)], picture_px)
        missing += not c.picture
    yield len(todo), len(todo), "writing"
    note = f"{missing} of the images are no longer where classify read them" if missing else ""
    if note:
        model_info["warning"] = "; ".join(x for x in (model_info.get("warning"), note) if x)
    counts = {k: sum(c.cls == k for c in cells) for k in classes}
    d = differential(counts, classes, extra)
    if d is not None:
        d = {"images": len(cells), "counts": counts, **d, "alerts": []}
    return ReportData(
        folder=folder,
        created=time.strftime("%Y-%m-%d %H:%M"),
        model=model_info,
        parameters=dict(audit.get("parameters") or {}),
        classes=classes,
        colours=colours,
        images=[],
        differential=d,
        domain_check=_domain(folder),
        **{k: v for k, v in shelves.items() if k != "classes"},
        kind="cells",
    )


def _picture(path: Path, size: int) -> str:
    """The whole cell image, squared on its longer side, as a data URI ("" when it cannot be read)."""
    from ..crops import as_uint8_rgb
    from ..io.images import read_image
    from .thumbnails import _resize, data_uri

    try:
        rgb = as_uint8_rgb(read_image(path))
    except (InputError, OSError, ValueError):
        return ""
    h, w = rgb.shape[:2]
    n = max(h, w)
    square = np.full((n, n, 3), 215, np.uint8)
    square[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = rgb[..., :3]
    return data_uri(_resize(square, size, smooth=True))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _domain(folder: Path) -> dict[str, Any] | None:
    d = _read_json(folder / "domain_check.json")
    return {"images": d.get("n"), **d} if d else None


__all__ = ["PREDICTIONS", "ReportCell", "iter_collect_cells"]
