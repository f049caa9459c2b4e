"""A second, coarser look for cells far larger than the rest (pure numpy).

Cellpose sees a cell whole only near the diameter it runs at: a white cell four to seven times the
size of the red cells around it (a CellaVision field, say) breaks into fragments or vanishes at the
red cells' scale. A second pass at twice the diameter, on an image a quarter the size, sees it
whole. :func:`add_large_cells` keeps from that coarse pass only the big cells the fine pass missed:
a coarse cell replaces the fine masks lying mostly inside it only when those masks cover less than
half of it. Where the fine pass found the cell, or a clump of smaller cells the coarse pass merged,
the fine masks cover it and nothing changes.
"""

from __future__ import annotations

import numpy as np

#: the coarse pass runs at this multiple of the fine pass's diameter, and keeps only cells at least
#: this multiple across
COARSE_FACTOR = 2.0
#: a coarse cell is taken only when fine masks cover less than this share of it
MAX_COVERED = 0.5
#: a fine mask with at least this share of its area inside a taken coarse cell is a fragment of it
FRAGMENT_INSIDE = 0.5


def add_large_cells(
    fine: np.ndarray,
    coarse: np.ndarray,
    min_diameter: float,
    max_covered: float = MAX_COVERED,
    fragment_inside: float = FRAGMENT_INSIDE,
) -> tuple[np.ndarray, int]:
    """Merge the big cells of a coarse pass that the fine pass missed into the fine labels.

    Parameters
    ----------
    fine, coarse
        Instance labels of the same image (0 = background) from the fine and the coarse pass.
    min_diameter
        Equivalent diameter (px) below which a coarse cell is ignored.
    max_covered
        A coarse cell is taken only if fine masks cover less than this share of its area.
    fragment_inside
        Fine masks with at least this share of their area inside a taken cell are removed.

    Returns
    -------
    labels, added
        New uint32 labels (``fine`` is not modified) and how many coarse cells were added.
    """
    from scipy import ndimage

    if fine.shape != coarse.shape:
        raise ValueError(f"label images differ in shape: {fine.shape} vs {coarse.shape}")
    areas = np.bincount(coarse.ravel())
    min_area = np.pi * (min_diameter / 2) ** 2
    big = np.flatnonzero(areas >= min_area)
    big = big[big > 0]
    if len(big) == 0:
        return fine.astype(np.uint32, copy=False), 0
    out = fine.astype(np.uint32, copy=True)
    fine_areas = np.bincount(fine.ravel())
    fine_boxes = ndimage.find_objects(fine)
    boxes = ndimage.find_objects(coarse)
    next_id = int(fine.max()) + 1
    added = 0
    for lab in big:
        bb = boxes[int(lab) - 1]
        cell = coarse[bb] == lab
        inside = out[bb][cell]
        if (inside > 0).mean() >= max_covered:
            continue
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        frags = ids[counts >= fragment_inside * fine_areas[ids]]
        for f in frags:
            fb = fine_boxes[int(f) - 1]
            out[fb][fine[fb] == f] = 0
        region = out[bb]
        region[cell & (region == 0)] = next_id
        next_id += 1
        added += 1
    return out, added
