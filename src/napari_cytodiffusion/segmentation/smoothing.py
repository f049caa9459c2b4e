"""Smooth outlines for masks computed at a coarser resolution than the image (pure numpy/scipy).

When cells are more than twice the network's scale, Cellpose computes masks on the image shrunk to
that scale and enlarges them by nearest neighbour (following the flows at full resolution would cost
more than the network itself): the outlines come back as staircases with steps the size of the
enlargement (3-4 px for a CellaVision field's 80 px red cells). :func:`smooth_enlarged_masks`
blurs each mask by about half a step and keeps, in each pixel, the cell that covers it most, so the
outline follows the cell as the low-resolution mask meant it to. Cells keep their labels, and
blurring a mask does not move its edge where it is straight.
"""

from __future__ import annotations

import numpy as np

#: below this enlargement the steps are a pixel or so: nothing to smooth
MIN_SCALE = 1.5


def smooth_enlarged_masks(labels: np.ndarray, scale: float) -> np.ndarray:
    """Smooth the staircase outlines of instance labels enlarged ``scale`` times by nearest neighbour.

    Parameters
    ----------
    labels
        2D instance labels (0 = background).
    scale
        The enlargement the masks underwent (image diameter / network diameter).

    Returns
    -------
    numpy.ndarray
        Labels of the same shape and dtype; ``labels`` itself when ``scale`` < :data:`MIN_SCALE`.
        A cell too thin to survive the blur keeps its original pixels.
    """
    from scipy import ndimage

    if scale < MIN_SCALE or labels.ndim != 2 or not labels.any():
        return labels
    sigma = 0.5 * scale
    pad = int(np.ceil(3 * sigma))
    h, w = labels.shape
    out = np.zeros_like(labels)
    cover = np.zeros(labels.shape, np.float32)  # how much the cell written in each pixel covers it
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        y0, y1 = max(0, box[0].start - pad), min(h, box[0].stop + pad)
        x0, x1 = max(0, box[1].start - pad), min(w, box[1].stop + pad)
        own = labels[y0:y1, x0:x1] == lab
        soft = ndimage.gaussian_filter(own.astype(np.float32), sigma, mode="nearest")
        take = (soft > 0.5) & (soft > cover[y0:y1, x0:x1])
        if not take.any():  # thinner than the blur: keep it as it was
            take = own & (cover[y0:y1, x0:x1] < 0.5)
            soft = np.where(own, 0.5, soft)
        cover[y0:y1, x0:x1][take] = soft[take]
        out[y0:y1, x0:x1][take] = lab
    return out
