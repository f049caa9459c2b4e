"""Reading images from disk and bringing arrays to a common form.

Every image entering the pipeline goes through :func:`to_rgb_float`, which accepts
grayscale, RGB or RGBA arrays of any integer or float dtype and returns float32 RGB in
[0, 1]. Bad input raises :class:`~napari_cytodiffusion.errors.InputError` with a message
a user can act on.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

#: the narrowest image (or plane of a stack) converted for segmentation, in pixels
MIN_IMAGE_SIDE = 8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def image_paths(items: list[str | os.PathLike], subfolders: bool = False) -> list[Path]:
    """Files, folders (their images, not recursing) and glob patterns → unique image paths, in order.

    With ``subfolders``, a folder also gives the images of its immediate sub-folders (a folder of
    slides, one sub-folder each). A folder or a pattern gives only its image files; a file named
    on its own must be one.

    Raises
    ------
    InputError
        For a pattern that matches nothing, a path that does not exist, a file named on its own
        that is not an image type, or no images at all.
    """
    out: list[Path] = []
    for item in map(str, items):
        pattern = any(ch in item for ch in "*?[")
        matches = [Path(m) for m in sorted(glob.glob(item))] if pattern else [Path(item)]
        if not matches:
            raise InputError(f"no files match {item}")
        for m in matches:
            if m.is_dir():
                folders = [m] + (sorted(d for d in m.iterdir() if d.is_dir()) if subfolders else [])
                for d in folders:
                    out += sorted(
                        f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                    )
            elif m.exists():
                if m.suffix.lower() in IMAGE_SUFFIXES:
                    out.append(m)
                elif not pattern:
                    _check_suffix(m)
            else:
                raise InputError(f"input not found: {m}")
    if not out:
        raise InputError("no input images")
    seen, uniq = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            uniq.append(p)
    return uniq


def check_distinct_stems(paths: list[Path]) -> None:
    """Refuse images whose per-image outputs (``NAME_labels.tif``, ``NAME_summary.json``) would share a name.

    ``a.png`` and ``a.jpg``, or ``slide1/f01.jpg`` and ``slide2/f01.jpg``, would write (or, on a
    resumed run, skip) each other's results. Names are compared ignoring case, as some file
    systems do.

    Raises
    ------
    InputError
        Naming the first clash and how many there are.
    """
    first: dict[str, Path] = {}
    clashes: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        key = p.stem.lower()
        if key in first:
            clashes.append((first[key], p))
        else:
            first[key] = p
    if clashes:
        a, b = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise InputError(
            f"{a} and {b} would write the same outputs ({a.stem}_*){more}: rename them or give each "
            "folder its own output folder"
        )


def _check_suffix(path: Path) -> str:
    """The file's suffix in lower case; :class:`InputError` if it is not an image type we read."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(
            f"{path.name}: unsupported file type {suffix or '(none)'}; "
            f"use one of {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return suffix


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
    suffix = _check_suffix(path)
    try:
        if suffix in {".tif", ".tiff"}:
            import tifffile

            arr = np.asarray(tifffile.imread(path))
            if arr.size == 0:
                raise InputError(f"cannot read {path.name}: the TIFF holds no image data (truncated?)")
            return arr
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
    norm = RGBNormaliser(image, name)
    return norm(0, norm.height, 0, norm.width)


class RGBNormaliser:
    """Per-tile conversion to float32 RGB [0, 1] with constants computed once for the whole image.

    Large images are never converted as a whole: the scaling constants come from a strided
    sample of at most ``max_samples`` pixels (all pixels for images up to that size, giving
    exactly :func:`to_rgb_float`), and each call converts one window only, so memory stays
    bounded by the tile size.
    """

    def __init__(self, image: np.ndarray, name: str = "image", max_samples: int = 16_000_000) -> None:
        arr = np.asarray(image)
        is_bool = arr.dtype == bool
        if arr.dtype.kind not in "uifb":
            raise InputError(f"{name}: unsupported data type {arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # channel-first (a view)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
            raise InputError(
                f"{name}: expected a 2D grayscale or RGB(A) image, got shape {tuple(np.shape(image))}"
            )
        if arr.shape[0] < MIN_IMAGE_SIDE or arr.shape[1] < MIN_IMAGE_SIDE:
            raise InputError(f"{name}: image is too small ({arr.shape[0]}x{arr.shape[1]} pixels)")
        self.arr = arr
        self.height, self.width = int(arr.shape[0]), int(arr.shape[1])
        self.fill = 0.0
        self.lo, self.hi = 0.0, 1.0
        self.mode = "uint8" if arr.dtype == np.uint8 else "identity" if is_bool else "scale"
        if self.mode != "scale":
            return
        stride = max(1, int(np.ceil(np.sqrt(self.height * self.width / max_samples))))
        sample = arr[::stride, ::stride].astype(np.float32)
        finite = np.isfinite(sample)
        if not finite.all():
            if not finite.any():
                raise InputError(f"{name}: image contains no finite values")
            self.fill = float(np.min(sample[finite]))
            sample = np.where(finite, sample, self.fill)
        if arr.dtype.kind == "f" and sample.min() >= 0.0 and sample.max() <= 1.0:
            self.mode = "identity"
            return
        if arr.dtype.kind in "ui":
            info = np.iinfo(arr.dtype)
            if arr.dtype.kind == "u" and sample.max() > info.max / 16:
                self.lo, self.hi = 0.0, float(info.max)
                return
        lo, hi = np.percentile(sample, [0.1, 99.9])
        if hi <= lo:
            lo, hi = float(sample.min()), float(sample.max())
        self.lo, self.hi = float(lo), float(hi)
        if self.hi <= self.lo:
            self.mode = "zero"

    def preview(self, max_pixels: int = 4_000_000) -> np.ndarray:
        """A strided, converted copy of the whole image of at most about ``max_pixels`` pixels."""
        stride = max(1, int(np.ceil(np.sqrt(self.height * self.width / max_pixels))))
        return self._convert(self.arr[::stride, ::stride])

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._convert(self.arr[y0:y1, x0:x1])

    def _convert(self, win: np.ndarray) -> np.ndarray:
        if win.ndim == 2:
            win = win[..., None]
        if self.mode == "uint8":
            out = win.astype(np.float32) / 255.0
        else:
            out = win.astype(np.float32)
            if self.fill != 0.0 or not np.isfinite(out).all():
                out = np.where(np.isfinite(out), out, np.float32(self.fill))
            if self.mode == "zero":
                out = np.zeros_like(out)
            elif self.mode == "scale":
                out = np.clip((out - self.lo) / (self.hi - self.lo), 0.0, 1.0)
            else:
                out = np.clip(out, 0.0, 1.0)
        if out.shape[-1] == 1:
            out = np.repeat(out, 3, axis=-1)
        return np.ascontiguousarray(out, dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] (or any image accepted by :func:`to_rgb_float`) to uint8 RGB."""
    rgb = to_rgb_float(image) if image.dtype != np.float32 or image.ndim != 3 else image
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
