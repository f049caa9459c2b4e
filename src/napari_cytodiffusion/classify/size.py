"""Is a smear cell's size plausible for the class it was called? (pure numpy)

A haematologist reads size first: a platelet is a quarter to half a red cell across, an
erythroblast about one red cell, a neutrophil about two. The diffusion classifier sees a crop
at the smear's physical scale, but on a stain or camera it was not trained on it can still call a
platelet-sized blob an erythroblast. This module compares each call with the sizes the class has
on the training smears.

Sizes are equivalent diameters in units of the smear's reference red cell (the median equivalent
diameter of its whole red cells, :func:`napari_cytodiffusion.pipeline.reference_diameter`): the
same reference that scales smear crops (:func:`napari_cytodiffusion.crops.smear_crop_side`). A model's metadata may hold, under
``extra["class_sizes"]``, the range of each class in those units (written by
``benchmarks/class_size.py --write-model``)::

    {"unit": "...", "source": "...", "range": {"neutrophil": [1.3, 2.7], ...}}

A class without a range, or a model without ``class_sizes``, is never ruled out. The smear
pipeline uses the ranges as a prior (:func:`allowed_classes`): a cell is called the best class its
size allows, and a cell whose appearance alone picks a class its size rules out is flagged, its
appearance call kept beside the new one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: widening of the measured 1st–99th percentile range on each side (as a factor), so that only a
#: size the class's training cells clearly never had rules it out
MARGIN = 1.15


def size_ratio(diameters: np.ndarray, reference: float | None) -> np.ndarray:
    """Diameters in units of the smear's reference red cell (NaN where there is no reference)."""
    d = np.asarray(diameters, dtype=np.float64)
    if not reference or reference <= 0:
        return np.full(d.shape, np.nan)
    return d / float(reference)


def class_ranges(metadata_extra: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    """The ``{class: (low, high)}`` size ranges of a model's metadata (empty when it has none)."""
    sizes = (metadata_extra or {}).get("class_sizes") or {}
    out = {}
    for cls, rng in (sizes.get("range") or {}).items():
        lo, hi = (float(v) if v is not None else np.nan for v in rng)
        out[str(cls)] = (0.0 if np.isnan(lo) else lo, np.inf if np.isnan(hi) else hi)
    return out


def implausible(
    called: list[str] | np.ndarray, ratios: np.ndarray, ranges: dict[str, tuple[float, float]]
) -> np.ndarray:
    """True where a cell's size lies outside the range of the class it was called.

    Cells without a size (NaN) or called a class without a range are never implausible.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    called = np.asarray(called, dtype=object)
    if called.shape != ratios.shape:
        raise ValueError(f"{called.shape[0]} calls but {ratios.shape[0]} sizes")
    out = np.zeros(ratios.shape, dtype=bool)
    known = np.isfinite(ratios)
    for cls, (lo, hi) in ranges.items():
        m = known & (called == cls)
        out[m] = (ratios[m] < lo) | (ratios[m] > hi)
    return out


def allowed_classes(
    ratios: np.ndarray, classes: list[str], ranges: dict[str, tuple[float, float]]
) -> np.ndarray:
    """(N, C) bool: the classes whose range holds each cell's size (all of them where it has none)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    out = np.ones((len(ratios), len(classes)), dtype=bool)
    known = np.isfinite(ratios)
    for j, cls in enumerate(classes):
        if cls in ranges:
            lo, hi = ranges[cls]
            out[known, j] = (ratios[known] >= lo) & (ratios[known] <= hi)
    return out


def ranges_from_percentiles(
    low: dict[str, float], high: dict[str, float], margin: float = MARGIN
) -> dict[str, list[float]]:
    """Size ranges from per-class low/high percentiles, widened by ``margin`` on each side."""
    return {c: [round(low[c] / margin, 3), round(high[c] * margin, 3)] for c in low}
