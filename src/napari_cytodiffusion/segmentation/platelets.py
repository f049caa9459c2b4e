"""A stain-based look for platelets the network left out (pure numpy/scipy).

Platelets are a quarter to half a red cell across and violet. The smear network, trained on red and
white cells, outlines only about half of them (48 of the 99 TXL-PBC val platelets). :func:`add_platelets`
looks between the cells it found for small compact blobs bluer than both the plasma and the red
cells, and adds them as cells of their own.

The score is blue − red, smoothed a little: red cells are red above blue, the plasma is neutral,
platelets, nuclei and granules are blue above red. A platelet is a connected region above
``extent`` that holds a point above ``seed`` (both measured from the field's own plasma) and above
the field's red cells, lies clear of the cells already found, and has a platelet's size (relative
to the field's cells) and shape. Everything is relative to the field, so stains and cameras that
shift the colours shift the references with them.

The constants were chosen on the 57 TXL-PBC val fields that hold platelets and checked on the 207
train fields that do (never used to choose them): platelets found 97 → 125 of 158 (Kaggle source),
93 → 120 of 162 (BCCD), 14 → 14 of 21 (Raabin-WBC), detection F1 of all cells 0.879 → 0.883,
0.912 → 0.917 and 0.913 → 0.909. On all 188 TXL-PBC val fields with the border mirror at 0.15,
platelets found 48 → 69 of 99 for 8 more false positives elsewhere (see docs/measurements.md).
"""

from __future__ import annotations

import numpy as np

#: a platelet's core is at least this far above the plasma's blue − red (0..1); on TXL-PBC val,
#: platelets peak 0.08–0.48 above it (5th percentile 0.10), other blobs between cells at a median 0.05
SEED_ABOVE_BACKGROUND = 0.10
#: its extent: pixels at least this far above the plasma, connected to the core
EXTENT_ABOVE_BACKGROUND = 0.03
#: the core is also this far above the median pixel of the cells already found (mostly red
#: cells): where a stain tints red cells violet, a red cell cut by the border is not a platelet
ABOVE_CELLS = 0.10
#: equivalent diameter, as a fraction of the field's cell diameter (median of the whole cells)
MIN_DIAMETER = 0.23
MAX_DIAMETER = 0.75
#: area / convex-hull area: platelets are compact, a cell's rim or a crease is not
MIN_SOLIDITY = 0.8
#: a blob is kept only clear of the cells already found: at most this share of it touches them
MAX_TOUCHING = 0.25


def blue_over_red(rgb01: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Smoothed blue − red of an RGB image in [0, 1]."""
    from scipy import ndimage

    v = rgb01[..., 2].astype(np.float32) - rgb01[..., 0].astype(np.float32)
    return ndimage.gaussian_filter(v, sigma) if sigma > 0 else v


def add_platelets(
    rgb01: np.ndarray,
    labels: np.ndarray,
    diameter: float,
    seed: float = SEED_ABOVE_BACKGROUND,
    extent: float = EXTENT_ABOVE_BACKGROUND,
) -> tuple[np.ndarray, int]:
    """Add the small blue-violet blobs between the cells of ``labels`` as new cells.

    Parameters
    ----------
    rgb01
        (H, W, 3) image in [0, 1].
    labels
        Instance labels of the same image (0 = background); not modified.
    diameter
        The field's cell (red-cell) diameter in pixels, as segmented.
    seed, extent
        Blue − red above the field's plasma that a platelet's core must reach, and that its
        outline encloses.

    Returns
    -------
    labels, n_added
        A new label image with the platelets numbered after the existing cells, and their number.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if rgb01.ndim != 3 or rgb01.shape[-1] < 3 or diameter <= 0:
        return labels, 0
    cells = labels > 0
    near = ndimage.binary_dilation(cells, iterations=2) if cells.any() else cells
    free = ~near
    if free.sum() < 100:  # the field is all cells: no background to measure against
        return labels, 0
    v = blue_over_red(rgb01)
    # the background is the plasma: the brighter half of what lies between the cells (their
    # fringes, darker and redder, would pull a plain median towards the cells)
    brightness = rgb01[..., :3].mean(axis=-1)
    plasma = free & (brightness >= np.median(brightness[free]))
    background = float(np.median(v[plasma]))
    region, n = ndimage.label(v > background + extent)
    if n == 0:
        return labels, 0
    index = np.arange(1, n + 1)
    peak = ndimage.maximum(v, region, index)
    area = ndimage.sum_labels(np.ones_like(v), region, index)
    touching = ndimage.sum_labels(near, region, index)
    # bluer than the field's red cells too: a stain that tints red cells violet must not make a red
    # cell cut by the border (which the network may leave out) a platelet
    cell_level = float(np.median(v[cells])) if cells.any() else background
    d = 2 * np.sqrt(area / np.pi)
    keep = (
        (peak > background + seed)
        & (d >= MIN_DIAMETER * diameter)
        & (d <= MAX_DIAMETER * diameter)
        & (touching <= MAX_TOUCHING * area)
        & (peak > cell_level + ABOVE_CELLS)
    )
    candidates = index[keep]
    if len(candidates) == 0:
        return labels, 0
    out = labels.astype(np.uint32, copy=True)
    next_id = int(out.max()) + 1
    added = 0
    slices = ndimage.find_objects(region)
    for r in candidates:
        sl = slices[r - 1]
        blob = (region[sl] == r) & ~cells[sl]
        if _solidity(blob) < MIN_SOLIDITY:
            continue
        out[sl][blob] = next_id
        next_id += 1
        added += 1
    return out, added


def _solidity(mask: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    area = int(mask.sum())
    if area < 3:
        return 0.0
    hull = int(convex_hull_image(mask).sum())
    return area / hull if hull else 0.0
