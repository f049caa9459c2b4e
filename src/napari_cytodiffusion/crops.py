"""Cutting model-ready crops: from single-cell images and from cells of a segmented smear.

Both paths follow the model metadata's ``preprocessing`` section, so training images,
evaluation images and smear cells reach the UNet at the same scale and normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .io.images import to_rgb_float


def _resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    resample = Image.Resampling.BOX if img.shape[0] >= size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(img).resize((size, size), resample=resample))


def as_uint8_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any accepted image → uint8 RGB (H, W, 3)."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    return np.clip(np.round(to_rgb_float(image, name) * 255.0), 0, 255).astype(np.uint8)


#: single-cell images with a shorter side under this many pixels hold no cell to classify
MIN_CELL_IMAGE_SIDE = 4


def _cell_image(image: np.ndarray, name: str) -> np.ndarray:
    rgb = as_uint8_rgb(image, name)
    if min(rgb.shape[:2]) < MIN_CELL_IMAGE_SIDE:
        raise InputError(
            f"{name}: {rgb.shape[0]}x{rgb.shape[1]} pixels is too small to hold a cell "
            f"(at least {MIN_CELL_IMAGE_SIDE} on each side)"
        )
    return rgb


def crop_single_cell(
    image: np.ndarray, size: int, center_crop_fraction: float, name: str = "image"
) -> np.ndarray:
    """Centre-crop a single-cell image square and resize it to ``size`` (uint8 RGB).

    Parameters
    ----------
    image
        Single-cell image of any size with the cell near the centre.
    size
        Output side in pixels.
    center_crop_fraction
        Fraction of the shorter side kept around the centre.
    name
        What error messages call the image (e.g. its file name).
    """
    rgb = _cell_image(image, name)
    h, w = rgb.shape[:2]
    side = max(1, int(round(min(h, w) * float(center_crop_fraction))))
    top, left = (h - side) // 2, (w - side) // 2
    return _resize_uint8(np.ascontiguousarray(rgb[top : top + side, left : left + side]), size)


def crop_centre_side(image: np.ndarray, size: int, side: float, name: str = "image") -> np.ndarray:
    """A square of ``side`` pixels around the image centre, resized to ``size`` (uint8 RGB).

    Where the square reaches beyond the image, the image is reflected (as for smear crops).
    """
    rgb = _cell_image(image, name)
    h, w = rgb.shape[:2]
    s = max(1, int(round(side)))
    top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
    pad = max(0, -top, -left, top + s - h, left + s - w)
    if pad:
        mode = "reflect" if min(h, w) > pad else "edge"
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
        top, left = top + pad, left + pad
    return _resize_uint8(np.ascontiguousarray(rgb[top : top + s, left : left + s]), size)


def single_cell_crops(
    images: Iterable[np.ndarray],
    preprocessing: dict[str, Any],
    red_cell_px: float | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Crop single-cell images as a model's metadata says → (N, S, S, 3) uint8.

    Without ``red_cell_px`` each image is centre-cropped to the metadata's fraction of its shorter
    side (images framed like the training images). With it (a red cell's diameter in these images'
    pixels) the square spans ``field_rbc_diameters`` red cells, the physical scale of the training
    crops, whatever the images' framing or magnification. ``images`` may be a generator (e.g. of
    files read one at a time): each image is cropped as it comes, so only the crops are held.
    ``names`` (e.g. file names) name an image that cannot be cropped (not 2D grayscale or RGB(A),
    or too small) in the error.
    """
    size = int(preprocessing["size"])
    if red_cell_px is not None:
        side = float(preprocessing["smear"]["field_rbc_diameters"]) * float(red_cell_px)

        def crop(im: np.ndarray, name: str) -> np.ndarray:
            return crop_centre_side(im, size, side, name)
    else:
        frac = float(preprocessing["single_cell"]["center_crop_fraction"])

        def crop(im: np.ndarray, name: str) -> np.ndarray:
            return crop_single_cell(im, size, frac, name)

    out = []
    for i, im in enumerate(images):
        if names is not None and i >= len(names):
            raise ValueError(f"more images than the {len(names)} names")
        out.append(crop(im, names[i] if names is not None else f"image {i + 1}"))
    if names is not None and len(out) != len(names):
        raise ValueError(f"{len(out)} images but {len(names)} names")
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def smear_crop_side(
    diameters: np.ndarray, preprocessing: dict[str, Any], reference: float | None = None
) -> np.ndarray:
    """Crop side (pixels) for each cell of a smear, from the cells' equivalent diameters.

    The field of view is ``field_rbc_diameters`` times ``reference``, the smear's red-cell
    diameter (:func:`napari_cytodiffusion.pipeline.reference_diameter`; the median of
    ``diameters`` when not given), i.e. the physical scale of the training crops; a cell larger
    than ``max_cell_fraction`` of that field gets a larger crop.
    """
    smear = preprocessing["smear"]
    diameters = np.asarray(diameters, dtype=np.float64)
    if diameters.size == 0:
        return diameters
    ref = float(reference) if reference else float(np.median(diameters))
    field = float(smear["field_rbc_diameters"]) * ref
    minimum = diameters / float(smear["max_cell_fraction"])
    return np.maximum(np.maximum(field, minimum), 8.0)


def crops_from_labels(
    image: np.ndarray,
    labels: np.ndarray,
    preprocessing: dict[str, Any],
    label_ids: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    diameters: np.ndarray | None = None,
    reference_diameter: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a model crop around each labelled cell of a smear.

    Parameters
    ----------
    image
        The smear (any accepted image type).
    labels
        Instance labels of the same height and width.
    preprocessing
        The model's preprocessing metadata.
    label_ids, centroids, diameters
        Optional precomputed cell table columns (all cells if omitted).
    reference_diameter
        Red-cell diameter of the whole smear (:func:`napari_cytodiffusion.pipeline.reference_diameter`);
        defaults to the median of ``diameters``.

    Returns
    -------
    crops, label_ids
        (N, S, S, 3) uint8 crops and the label id of each.
    """
    rgb = as_uint8_rgb(image)
    labels = np.asarray(labels)
    if labels.shape[:2] != rgb.shape[:2]:
        raise InputError(f"labels shape {labels.shape[:2]} does not match image shape {rgb.shape[:2]}")
    size = int(preprocessing["size"])
    if label_ids is None or centroids is None or diameters is None:
        from .segmentation.table import cells_table

        table = cells_table(labels)
        label_ids = table["label"].to_numpy()
        centroids = table[["centroid_y", "centroid_x"]].to_numpy()
        diameters = table["equivalent_diameter"].to_numpy()
    label_ids = np.asarray(label_ids)
    if label_ids.size == 0:
        return np.zeros((0, size, size, 3), np.uint8), label_ids
    sides = smear_crop_side(np.asarray(diameters), preprocessing, reference_diameter)
    pad = int(np.ceil(sides.max() / 2)) + 2
    padded = np.pad(
        rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect" if min(rgb.shape[:2]) > pad else "edge"
    )
    out = np.empty((label_ids.size, size, size, 3), np.uint8)
    for i, ((cy, cx), side) in enumerate(zip(np.asarray(centroids), sides, strict=True)):
        s = int(round(side))
        top = int(round(cy - s / 2)) + pad
        left = int(round(cx - s / 2)) + pad
        out[i] = _resize_uint8(np.ascontiguousarray(padded[top : top + s, left : left + s]), size)
    return out, label_ids


def to_model_tensor(crops: np.ndarray):
    """uint8 (N, S, S, 3) → float32 torch tensor (N, 3, S, S) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def from_model_tensor(x) -> np.ndarray:
    """Inverse of :func:`to_model_tensor` → uint8 (N, S, S, 3)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def training_preprocessing(preprocessing: dict[str, Any], margin: float = 1.125) -> dict[str, Any]:
    """Preprocessing for *training* crops: the same cell scale with a ``margin`` wider field.

    Training crops keep room around the nominal field for rotation and scale jitter
    (see :func:`napari_cytodiffusion.model.augment.augment_batch`).
    """
    import copy

    pre = copy.deepcopy(preprocessing)
    pre["size"] = int(round(int(preprocessing["size"]) * margin))
    pre["single_cell"]["center_crop_fraction"] = min(
        1.0, float(preprocessing["single_cell"]["center_crop_fraction"]) * margin
    )
    pre["smear"]["field_rbc_diameters"] = float(preprocessing["smear"]["field_rbc_diameters"]) * margin
    pre["smear"]["max_cell_fraction"] = float(preprocessing["smear"]["max_cell_fraction"]) / margin
    return pre
