"""Instance pseudo-masks from complete bounding boxes (one box per cell).

Blood cells are round or oval, so the ellipse inscribed in a cell's box is a close stand-in for its
outline. Boxes cut by the image border are completed first (a cell cut by the left edge keeps its
height as its width, centred accordingly), so its ellipse is cut by the border like the cell.
Where ellipses overlap, a pixel goes to the cell whose ellipse it lies deepest in. Used to train
the smear model on data sets that only have boxes (TXL-PBC).
"""

from __future__ import annotations

import numpy as np


def _complete_box(y0: float, x0: float, y1: float, x1: float, h: int, w: int, tol: float = 1.5):
    """Extend a box cut by the image border to the size of the whole (round) cell."""
    bh, bw = y1 - y0, x1 - x0
    if bw < bh and (x0 <= tol) != (x1 >= w - tol):  # cut on exactly one side: complete to a circle
        x0, x1 = (x1 - bh, x1) if x0 <= tol else (x0, x0 + bh)
    if bh < bw and (y0 <= tol) != (y1 >= h - tol):
        y0, y1 = (y1 - bw, y1) if y0 <= tol else (y0, y0 + bw)
    return y0, x0, y1, x1


def masks_from_boxes(shape: tuple[int, int], boxes: np.ndarray, min_size: int = 4) -> np.ndarray:
    """Label image (int32, 1..N in box order) of the ellipses inscribed in ``boxes``.

    Parameters
    ----------
    shape
        (height, width) of the image.
    boxes
        (N, 4) boxes ``y0, x0, y1, x1`` in pixels (as from
        :func:`~napari_cytodiffusion.evaluate.segmentation.read_yolo`).
    min_size
        Boxes narrower than this in either direction are skipped (degenerate annotations).
    """
    h, w = shape
    labels = np.zeros((h, w), np.int32)
    depth = np.full((h, w), np.inf, np.float32)
    for i, box in enumerate(np.asarray(boxes, float).reshape(-1, 4), 1):
        y0, x0, y1, x1 = _complete_box(*box, h, w)
        if y1 - y0 < min_size or x1 - x0 < min_size:
            continue
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
        if r0 >= r1 or c0 >= c1:
            continue
        yy = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - cy) / ry
        xx = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - cx) / rx
        d = yy**2 + xx**2
        win_d, win_l = depth[r0:r1, c0:c1], labels[r0:r1, c0:c1]
        take = (d <= 1.0) & (d < win_d)
        win_d[take] = d[take]
        win_l[take] = i
    return labels
