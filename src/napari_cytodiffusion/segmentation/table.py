"""The cells table: one row per labelled cell."""

from __future__ import annotations

import numpy as np

COLUMNS = [
    "label", "centroid_y", "centroid_x", "area", "equivalent_diameter",
    "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "mean_r", "mean_g", "mean_b", "touches_border",
]  # fmt: skip


def cells_table(labels: np.ndarray, image: np.ndarray | None = None):
    """Measure every cell of a 2D label image.

    Parameters
    ----------
    labels
        Integer instance labels (0 = background).
    image
        Optional RGB image (any accepted type) for mean colours (0-1 scale).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`, one row per label, sorted by label.
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        from ..errors import InputError

        raise InputError(f"labels must be 2D, got shape {labels.shape}")
    if labels.max(initial=0) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in COLUMNS}).astype(
            {"label": int, "touches_border": bool}
        )
    props = regionprops_table(
        labels.astype(np.int64), properties=("label", "centroid", "area", "equivalent_diameter_area", "bbox")
    )
    df = pd.DataFrame(
        {
            "label": props["label"].astype(int),
            "centroid_y": props["centroid-0"],
            "centroid_x": props["centroid-1"],
            "area": props["area"].astype(int),
            "equivalent_diameter": props["equivalent_diameter_area"],
            "bbox_y0": props["bbox-0"], "bbox_x0": props["bbox-1"],
            "bbox_y1": props["bbox-2"], "bbox_x1": props["bbox-3"],
        }
    )  # fmt: skip
    h, w = labels.shape
    df["touches_border"] = (df.bbox_y0 == 0) | (df.bbox_x0 == 0) | (df.bbox_y1 == h) | (df.bbox_x1 == w)
    if image is not None:
        from ..io.images import to_rgb_float

        rgb = to_rgb_float(image)
        idx = labels.ravel()
        counts = np.bincount(idx, minlength=int(idx.max()) + 1).astype(float)
        for ch, name in enumerate(("mean_r", "mean_g", "mean_b")):
            sums = np.bincount(idx, weights=rgb[..., ch].ravel(), minlength=len(counts))
            df[name] = (sums / np.maximum(counts, 1))[df["label"].to_numpy()]
    else:
        for name in ("mean_r", "mean_g", "mean_b"):
            df[name] = np.nan
    return df[COLUMNS].reset_index(drop=True)


def stack_cells_table(labels: np.ndarray, image: np.ndarray | None = None):
    """:func:`cells_table` of a 2D label image, or of every plane of a (Z, H, W) stack.

    A stack's planes are segmented one by one (:func:`~.cellpose_seg.segment`), so labels restart
    at 1 in each plane; the table's first column ``plane`` then says which plane a row is of.
    ``image``: the stack's image, (Z, H, W[, C]), for the mean colours.
    """
    import pandas as pd

    from ..errors import InputError

    labels = np.asarray(labels)
    if labels.ndim == 2:
        return cells_table(labels, image)
    if labels.ndim != 3:
        raise InputError(f"labels must be 2D or a stack of 2D planes, got shape {labels.shape}")
    if image is not None and len(image) != len(labels):
        raise InputError(f"{len(labels)} label planes for an image of {len(image)} planes")
    parts = []
    for z, plane in enumerate(labels):
        table = cells_table(plane, None if image is None else image[z])
        table.insert(0, "plane", z)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


#: the largest label id an output labels image holds (they are uint32)
MAX_LABEL_ID = 2**32 - 1
#: label ids above this are measured on a compact copy (ids 1..N): the measurements allocate per id
COMPACT_ABOVE = 2**22


def check_labels(labels, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A user's instance labels as an integer array, or a clear error.

    Accepted: integers (or booleans, one cell) of 0 (background) and positive ids up to
    :data:`MAX_LABEL_ID`, and floats that hold whole numbers only (a labels image saved as float);
    ``shape``: the image's (rows, columns) they must match.
    """
    from ..errors import InputError

    arr = np.asarray(labels)
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(f"labels {arr.shape} do not match the image {tuple(shape)}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise InputError(f"labels must be whole numbers, not {arr.dtype}")
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr))):
        raise InputError("labels must be whole numbers (0 for background, 1, 2, ... for cells)")
    if arr.size and arr.min() < 0:
        raise InputError("labels must be 0 (background) or positive cell ids; these have negative values")
    if arr.size and arr.max() > MAX_LABEL_ID:
        raise InputError(
            f"label ids up to {MAX_LABEL_ID:,} (uint32) are supported, these reach {int(arr.max()):,}: "
            "number the cells 1, 2, ... (e.g. skimage.segmentation.relabel_sequential)"
        )
    return arr.astype(np.int64) if arr.dtype.kind == "f" else arr


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels with ids 1..N in place of very large ones, and the original id of each (index 0: 0).

    Returns ``(labels, None)`` when the largest id is at most :data:`COMPACT_ABOVE`.
    """
    if labels.size == 0 or int(labels.max()) <= COMPACT_ABOVE:
        return labels, None
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.uint32), ids.astype(np.uint64)
