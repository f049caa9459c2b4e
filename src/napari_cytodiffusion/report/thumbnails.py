"""One cell cut from its smear as a small picture, outlined by its mask, for a gallery."""

from __future__ import annotations

import base64
import io

import numpy as np

#: grey outside the image, so a cell at the border shows where the field ends
OUTSIDE = 215


def cell_thumbnail(
    image: np.ndarray,
    labels: np.ndarray,
    label: int,
    bbox: tuple[int, int, int, int],
    size: int = 96,
    margin: float = 0.35,
    outline: tuple[int, int, int] | None = None,
    min_side: float = 0.0,
) -> np.ndarray:
    """A square ``size`` × ``size`` RGB picture of one cell with some of its surroundings.

    Parameters
    ----------
    image
        The smear, ``(H, W, 3)`` uint8.
    labels
        Its instance labels, ``(H, W)``.
    label, bbox
        The cell's label and bounding box ``(y0, x0, y1, x1)`` (``y1``, ``x1`` exclusive).
    size
        Side of the picture in pixels.
    margin
        Surroundings shown on each side, as a fraction of the cell's larger side: a haematologist
        judges a white cell against the red cells beside it.
    outline
        RGB colour of the mask's outline drawn over the picture (None: no outline), so that the
        segmentation can be checked at a glance.
    min_side
        The least side of the cut-out, in image pixels. Given as a few red-cell diameters, every
        cell of a smear smaller than that is shown at one magnification, so a platelet looks
        small beside a white cell, as under the microscope.
    """
    y0, x0, y1, x1 = (int(v) for v in bbox)
    side = max(max(y1 - y0, x1 - x0, 4) * (1.0 + 2.0 * margin), min_side)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top, left = int(round(cy - side / 2.0)), int(round(cx - side / 2.0))
    n = int(round(side))
    crop = np.full((n, n, 3), OUTSIDE, np.uint8)
    mask = np.zeros((n, n), bool)
    h, w = labels.shape
    sy0, sx0, sy1, sx1 = max(top, 0), max(left, 0), min(top + n, h), min(left + n, w)
    if sy1 > sy0 and sx1 > sx0:
        crop[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1, :3]
        mask[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = labels[sy0:sy1, sx0:sx1] == label
    thumb = _resize(crop, size, smooth=True)
    if outline is not None and mask.any():
        from scipy.ndimage import binary_erosion

        m = _resize(mask.astype(np.uint8) * 255, size, smooth=False) > 127
        edge = m & ~binary_erosion(m, border_value=0)
        thumb[edge] = outline
    return thumb


def _resize(a: np.ndarray, size: int, smooth: bool) -> np.ndarray:
    from PIL import Image

    method = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(a).resize((size, size), method)).copy()


def data_uri(picture: np.ndarray, quality: int = 88) -> str:
    """A picture as a ``data:image/jpeg;base64,...`` URI, to embed in a self-contained page."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``"#1f77b4"`` → ``(31, 119, 180)``."""
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
