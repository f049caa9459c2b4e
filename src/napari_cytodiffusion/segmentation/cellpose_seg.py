"""Cellpose segmentation of smears: the project's offline smear model, built-ins, user models.

Large images are segmented in overlapping tiles, each tile processed independently and the
tiles stitched by keeping, for every cell, the tile in which it lies furthest from an edge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError, ModelError
from ..paths import DEFAULT_SMEAR_MODEL
from .channels import smear_channels

SMEAR_MODEL_NAME = "smear"
BUILTIN_MODELS = ("cyto3", "cyto2", "cyto", "nuclei")


@dataclass
class SegmentParams:
    """Segmentation settings (also recorded in exports' audit trail)."""

    model: str = SMEAR_MODEL_NAME
    diameter: float | None = None
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = 15
    exclude_border: bool = False
    tile_size: int = 2048
    tile_overlap: int = 192
    gpu: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedSegmenter:
    model: Any
    name: str
    diam_mean: float
    two_channel: bool


def _cellpose_models_dir() -> Path:
    return Path(os.environ.get("CELLPOSE_LOCAL_MODELS_PATH", Path.home() / ".cellpose" / "models"))


def load_segmenter(model: str = SMEAR_MODEL_NAME, gpu: bool = False) -> LoadedSegmenter:
    """Load a Cellpose model: ``"smear"`` (bundled), a built-in name, a model file or a smear-model folder.

    Loaded networks are cached; a file or folder is loaded again when its weights change.
    """
    return _load_segmenter(model, gpu, _weights_mtime(model))


def _weights_mtime(model: str) -> int:
    path = Path(model) if model != SMEAR_MODEL_NAME else DEFAULT_SMEAR_MODEL
    if path.is_dir():
        path = path / "cellpose_smear.pt"
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@lru_cache(maxsize=4)
def _load_segmenter(model: str, gpu: bool, mtime: int) -> LoadedSegmenter:
    import torch

    use_gpu = bool(gpu and torch.cuda.is_available())
    from cellpose import models

    folder = DEFAULT_SMEAR_MODEL if model == SMEAR_MODEL_NAME else Path(model)
    if folder.is_dir() and (folder / "cellpose_smear.json").is_file():
        # the project's 2-channel smear format: the bundled model, or one made by scripts/train_smear_model.py
        try:
            info = json.loads((folder / "cellpose_smear.json").read_text())
            net = models.CellposeModel(
                gpu=use_gpu,
                pretrained_model=False,
                model_type=None,
                diam_mean=float(info["diam_mean"]),
                nchan=2,
            )
            state = torch.load(folder / "cellpose_smear.pt", map_location="cpu", weights_only=True)
            net.net.load_state_dict({k: v.float() for k, v in state.items()})
        except Exception as exc:  # missing/corrupt files: one clear message
            raise ModelError(f"cannot load the smear model in {folder}: {type(exc).__name__}: {exc}") from exc
        net.net.eval()
        name = "smear (project model)" if model == SMEAR_MODEL_NAME else f"smear model {folder}"
        return LoadedSegmenter(net, name, float(info["diam_mean"]), True)
    if model in BUILTIN_MODELS:
        cached = list(_cellpose_models_dir().glob(f"{model}*"))
        if not cached and _offline():  # Cellpose would try (and fail) to download it
            raise ModelError(
                f"Cellpose model {model!r} is not cached in {_cellpose_models_dir()} and the internet "
                f"cannot be reached; use the bundled model 'smear' or copy the file there"
            )
        try:
            net = models.CellposeModel(gpu=use_gpu, model_type=model)
        except Exception as exc:  # network/download errors vary
            raise ModelError(f"cannot load Cellpose model {model!r}: {exc}") from exc
        return LoadedSegmenter(net, model, float(net.diam_mean), False)
    path = Path(model)
    if not path.is_file():
        raise ModelError(
            f"unknown segmentation model {model!r}: use 'smear', one of {', '.join(BUILTIN_MODELS)}, "
            "a Cellpose model file, or a smear-model folder"
        )
    try:
        net = models.CellposeModel(gpu=use_gpu, pretrained_model=str(path))
    except Exception as exc:
        raise ModelError(f"cannot load Cellpose model file {path}: {exc}") from exc
    return LoadedSegmenter(net, str(path), float(net.diam_mean), False)


def _offline() -> bool:
    import socket

    try:
        socket.create_connection(("www.cellpose.org", 443), timeout=2).close()
        return False
    except OSError:
        return True


def _prepare(seg: LoadedSegmenter, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    if seg.two_channel:
        return np.moveaxis(smear_channels(rgb), -1, 0), {"channel_axis": 0, "channels": None}
    gray = 1.0 - rgb.mean(axis=-1)  # cells dark on bright background → bright cells
    return gray[None], {"channel_axis": 0, "channels": [0, 0]}


def _eval(
    seg: LoadedSegmenter, x: np.ndarray, kw: dict[str, Any], params: SegmentParams, diameter: float | None
) -> np.ndarray:
    masks = seg.model.eval(
        x,
        diameter=diameter,
        flow_threshold=params.flow_threshold,
        cellprob_threshold=params.cellprob_threshold,
        min_size=params.min_size,
        **kw,
    )[0]
    return np.asarray(masks, dtype=np.uint32)


def _median_diameter(labels: np.ndarray) -> float | None:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if len(areas) < 3:
        return None
    return float(np.median(2 * np.sqrt(areas / np.pi)))


#: an automatic diameter further than this factor from the model's own scale is not trusted
MAX_RESCALE = 4.0


def _plausible_diameter(d: float | None, diam_mean: float) -> float | None:
    """``d`` if it is within :data:`MAX_RESCALE` of the model's scale, else None."""
    if d is None or not (diam_mean / MAX_RESCALE <= d <= diam_mean * MAX_RESCALE):
        return None
    return d


def iter_segment(
    image: np.ndarray, params: SegmentParams | None = None, should_stop: Callable[[], bool] | None = None
) -> Iterator[tuple[int, int] | np.ndarray]:
    """Segment one 2D image; yields ``(tiles_done, tiles_total)`` then the uint32 labels."""
    from ..io.images import RGBNormaliser

    params = params or SegmentParams()
    norm = RGBNormaliser(image)  # converts tile by tile: memory stays bounded for huge images
    h, w = norm.height, norm.width
    preview = norm.preview()
    if float(preview.max() - preview.min()) < 1e-3:
        yield (1, 1)
        yield np.zeros((h, w), np.uint32)
        return
    del preview
    seg = load_segmenter(params.model, params.gpu)
    diameter = params.diameter
    if diameter is not None and diameter <= 0:
        raise InputError("diameter must be positive (or empty for automatic)")
    first_pass = None
    if diameter is None:  # automatic: a first pass at the model's scale on a central window
        wy0, wx0 = max(0, h // 2 - 512), max(0, w // 2 - 512)
        win = norm(wy0, h // 2 + 512, wx0, w // 2 + 512)
        x, kw = _prepare(seg, win)
        first_pass = _eval(seg, x, kw, params, None)
        d = _plausible_diameter(_median_diameter(first_pass), seg.diam_mean)
        if d is None:
            # nothing sensible at the model's scale (e.g. a few fragments of cells far larger than
            # it was trained on, which would rescale the image 10x): look again at half size
            d = _plausible_diameter(
                _median_diameter(_eval(seg, x, kw, params, 2 * seg.diam_mean)), seg.diam_mean
            )
        diameter = d if d is not None and abs(d / seg.diam_mean - 1) > 0.25 else None
        if diameter is not None or win.shape[:2] != (h, w):
            first_pass = None  # rescaled or only a window: segment again below
    tiles = _tiles(h, w, params.tile_size, params.tile_overlap)
    labels = np.zeros((h, w), np.uint32)
    next_id = 1
    for i, (y0, y1, x0, x1) in enumerate(tiles):
        if should_stop is not None and should_stop():
            raise Cancelled("segmentation cancelled")
        if first_pass is not None and len(tiles) == 1:
            m = first_pass  # the automatic-diameter pass already covered the whole image at this scale
        else:
            tile = norm(y0, y1, x0, x1)
            if float(tile.max() - tile.min()) < 1e-3:  # empty background: nothing to find
                m = np.zeros(tile.shape[:2], np.int32)
            else:
                x, kw = _prepare(seg, tile)
                m = _eval(seg, x, kw, params, diameter)
            del tile
        if len(tiles) == 1:
            labels = m
        else:
            next_id = _paste(labels, m, (y0, y1, x0, x1), (h, w), params.tile_overlap, next_id)
        yield (i + 1, len(tiles))
    if params.exclude_border:
        from skimage.segmentation import clear_border

        labels = clear_border(labels)
    if params.exclude_border or len(tiles) == 1:
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0]
    # pasted tiles are numbered 1..n already; avoid a whole-image copy for huge images
    yield labels if labels.dtype == np.uint32 else labels.astype(np.uint32)


def segment(image: np.ndarray, params: SegmentParams | None = None, **kwargs: Any) -> np.ndarray:
    """Segment a 2D image (or each plane of a stack) → uint32 labels.

    Parameters
    ----------
    image
        (H, W), (H, W, C) or a stack (Z, H, W[, C]) processed plane by plane.
    params
        :class:`SegmentParams`; keyword arguments override its fields.
    """
    params = params or SegmentParams()
    if kwargs:
        params = SegmentParams(**{**params.to_dict(), **kwargs})
    arr = np.asarray(image)
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        return np.stack([segment(plane, params) for plane in arr])
    out = None
    for item in iter_segment(arr, params):
        out = item
    return out


def _tiles(h: int, w: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    if h <= size and w <= size:
        return [(0, h, 0, w)]
    step = max(1, size - overlap)
    ys = list(range(0, max(1, h - overlap), step))
    xs = list(range(0, max(1, w - overlap), step))
    return [(y, min(h, y + size), x, min(w, x + size)) for y in ys for x in xs]


def _paste(labels, tile, box, shape, overlap, next_id) -> int:
    """Paste a tile's cells whose centre lies in the tile's core region (no double counting)."""
    y0, y1, x0, x1 = box
    h, w = shape
    half = overlap // 2
    cy0 = y0 + (half if y0 > 0 else 0)
    cy1 = y1 - (half if y1 < h else 0)
    cx0 = x0 + (half if x0 > 0 else 0)
    cx1 = x1 - (half if x1 < w else 0)
    from scipy import ndimage

    ids = np.unique(tile)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return next_id
    centres = ndimage.center_of_mass(np.ones_like(tile), tile, ids)
    boxes = ndimage.find_objects(tile)
    region = labels[y0:y1, x0:x1]
    for lab, (cy, cx) in zip(ids, centres, strict=True):
        gy, gx = cy + y0, cx + x0
        if cy0 <= gy < cy1 and cx0 <= gx < cx1:
            bb = boxes[int(lab) - 1]
            sub = region[bb]
            sub[(tile[bb] == lab) & (sub == 0)] = next_id
            next_id += 1
    return next_id
