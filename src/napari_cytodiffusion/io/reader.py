"""napari reader: drop a saved smear result (``NAME_summary.json`` or ``NAME_cells.csv``) on the viewer.

It opens what ``analyze``, ``classify --labels``, ``demo`` or *Export results* wrote for one smear
as three layers: the analysed image (found as :func:`.results.saved_image` finds it), the labels
coloured by class, and the cells as points with every column of the cells table as features —
the same layers a fresh run makes. To correct calls or fine-tune from them, open the result
with the *Classify cells* widget's *Open saved result* instead, which also connects the legend
and the cell inspector.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError

#: the files of a result that the reader claims (a labels TIFF stays with the TIFF readers)
_CLAIMED = ("_summary.json", "_cells.csv")
_DEMO = ("summary.json", "cells.csv")


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list] | None:
    """The reader for a saved smear result, or ``None`` for any other file (napari then tries others)."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if not (p.name.endswith(_CLAIMED) or p.name in _DEMO):
        return None
    from .results import output_files

    try:
        _, files = output_files(p)
    except InputError:
        return None
    return read_saved_result if all(f.is_file() for f in files.values()) else None


def read_saved_result(path: str | os.PathLike | list) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data (image, labels, cells) of a saved smear result.

    Raises :class:`~napari_cytodiffusion.errors.InputError` (shown by napari as a notification)
    when the result cannot be read or has no model to name its classes. A missing or moved image
    leaves the image out, with a warning: the labels and cells still open.
    """
    from napari.utils.notifications import show_warning

    from ..layers import label_colour_dict, points_layer_kwargs
    from .results import read_smear_outputs, saved_image, saved_model

    if isinstance(path, list):
        path = path[0]
    saved = read_smear_outputs(path)
    model, model_warning = saved_model(saved)
    md = model.metadata
    res = saved.result
    meta = {"napari-cytodiffusion": {"opened_from": str(path), "model": model.short_id()}}
    layers: list[tuple[Any, dict[str, Any], str]] = []
    try:
        image, image_warning = saved_image(saved)
    except InputError as exc:
        image, image_warning = (
            None,
            f"{exc}; opened without it (Classify cells > Open saved result takes its new place)",
        )
    if image is not None:
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        layers.append((image, {"name": saved.stem, "rgb": rgb, "metadata": meta}, "image"))
    colours = label_colour_dict(res.table, "class", md.classes, md.colours)
    layers.append(
        (res.labels, {"name": f"{saved.stem} labels", "colormap": colours, "metadata": meta}, "labels")
    )
    coords, kwargs = points_layer_kwargs(res.table, md.classes, md.colours)
    layers.append((coords, {**kwargs, "name": f"{saved.stem} cells", "metadata": meta}, "points"))
    for warning in (image_warning, model_warning):
        if warning:
            show_warning(warning)
    return layers
