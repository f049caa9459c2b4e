"""Reading images from disk and bringing arrays to a common form.

Every image entering the pipeline goes through :func:`to_rgb_float`, which accepts
grayscale, RGB or RGBA arrays of any integer or float dtype and returns float32 RGB in
[0, 1]. Bad input raises :class:`~napari_cytodiffusion.errors.InputError` with a message
a user can act on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into a numpy array (no conversion).

    Raises
    ------
    InputError
        If the file does not exist, is not an image, or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(
            f"{path.name}: unsupported file type {suffix or '(none)'}; "
            f"use one of {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    try:
        if suffix in {".tif", ".tiff"}:
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode in {"P", "CMYK", "YCbCr", "LA", "I;16B"}:
                im = im.convert("RGBA" if "A" in im.mode or im.mode == "P" else "RGB")
            return np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # decoders raise many unrelated types
        raise InputError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc


def to_rgb_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert a 2D image (H, W), (H, W, 1|3|4) to float32 RGB in [0, 1].

    Integer images are scaled by their dtype range (uint16 images that use only a
    fraction of the range are stretched to their 0.1-99.9 percentiles); float images
    in [0, 1] are kept, other float ranges are stretched. NaN/inf are replaced by
    the image's finite minimum.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "uif":
        raise InputError(f"{name}: unsupported data type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif not (arr.ndim == 3 and arr.shape[-1] == 3):
        raise InputError(
            f"{name}: expected a 2D grayscale or RGB(A) image, got shape {tuple(np.shape(image))}"
        )
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise InputError(f"{name}: image is too small ({arr.shape[0]}x{arr.shape[1]} pixels)")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    out = arr.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        if not finite.any():
            raise InputError(f"{name}: image contains no finite values")
        out = np.where(finite, out, np.min(out[finite]))
    if arr.dtype.kind == "f" and out.min() >= 0.0 and out.max() <= 1.0:
        return out
    if arr.dtype.kind in "ui":
        info = np.iinfo(arr.dtype)
        if arr.dtype.kind == "u" and out.max() > info.max / 16:
            return (out / info.max).astype(np.float32)
    lo, hi = np.percentile(out, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        return np.zeros_like(out, dtype=np.float32)
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] (or any image accepted by :func:`to_rgb_float`) to uint8 RGB."""
    rgb = to_rgb_float(image) if image.dtype != np.float32 or image.ndim != 3 else image
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
