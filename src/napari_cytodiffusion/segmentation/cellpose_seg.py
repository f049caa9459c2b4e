"""Cellpose segmentation of smears: the project's offline smear model, built-ins, user models.

Large images are segmented in overlapping tiles, each tile processed independently and the
tiles stitched by keeping, for every cell, the tile in which it lies furthest from an edge.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError, ModelError
from ..io.images import MIN_IMAGE_SIDE
from ..paths import DEFAULT_SMEAR_MODEL
from .channels import smear_channels
from .smoothing import smooth_enlarged_masks

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
    #: masks larger than this fraction of the image (tile) are dropped as spurious. Cellpose's own
    #: default, 0.4, drops the cell of a single-cell image (a white cell filling 42 % of a 120 px
    #: crop: 18 % of segmentation_WBC dataset 1 lost); no cell of a smear field comes near 0.9
    max_size_fraction: float = 0.9
    exclude_border: bool = False
    #: the image is mirrored this many cell diameters beyond its edges before segmentation and the
    #: masks cut back: a cell cut by the border then continues in its mirror image, so the network
    #: sees a whole cell instead of a sliver (0 = off; see :func:`border_pad_pixels`). A few pixels
    #: (0.05 diameters) already outline most cells cut by the border (TXL-PBC val red cells found,
    #: F1 0.905 -> 0.918; Chula RBC-12 points missed 1.3 -> 0.7 %); more outlines more of them
    #: (0.15: F1 0.926) but also more of what a reference that leaves them unlabelled counts as
    #: false positives (BBBC041 val AP50 0.877 / 0.871 / 0.849 at 0 / 0.05 / 0.15)
    border_pad: float = 0.05
    #: Cellpose test-time augmentation: overlapping network tiles, each also seen flipped, averaged
    augment: bool = False
    #: a second pass at twice the diameter adds cells over twice the size of the rest that the first
    #: pass missed (see :mod:`.large_cells`)
    large_cells: bool = True
    #: a stain-based look between the cells for platelets the network left out (see
    #: :mod:`.platelets`)
    platelets: bool = True
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


class _EmptyLookFilter(logging.Filter):
    """Drops Cellpose's "no seeds found ... no masks found" warning.

    A look of the automatic diameter, a tile or a blank plane that holds no cell is an expected
    outcome here, reported as a count of cells; unfiltered, the warning reached every user's console
    (the logging module's last-resort handler) beside a segmentation that found its cells.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "no seeds found" not in record.getMessage()


def _quiet_empty_looks() -> None:
    logger = logging.getLogger("cellpose.dynamics")
    if not any(isinstance(f, _EmptyLookFilter) for f in logger.filters):
        logger.addFilter(_EmptyLookFilter())


@lru_cache(maxsize=4)
def _load_segmenter(model: str, gpu: bool, mtime: int) -> LoadedSegmenter:
    import torch

    _quiet_empty_looks()

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
                # Cellpose's MKL-DNN path converts the network on every call; plain convolutions in
                # channels-last order are ~15 % faster on a CPU (4.5 s vs 5.3 s per 640 x 480 field)
                mkldnn=False,
            )
            state = torch.load(folder / "cellpose_smear.pt", map_location="cpu", weights_only=True)
            net.net.load_state_dict({k: v.float() for k, v in state.items()})
        except Exception as exc:  # missing/corrupt files: one clear message
            raise ModelError(f"cannot load the smear model in {folder}: {type(exc).__name__}: {exc}") from exc
        net.net.eval()
        if not use_gpu:
            net.net.to(memory_format=torch.channels_last)
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


#: below this rescaling factor (cells over twice the model's scale), masks are computed at the
#: network's resolution and enlarged, instead of following the flows at full resolution: Cellpose
#: would run 200 / factor flow steps over every full-resolution pixel (8 s instead of 0.5 s for a
#: 575 px Raabin-WBC field with 120 px cells)
RESAMPLE_MIN_FACTOR = 0.5


def follows_full_resolution(seg: LoadedSegmenter, diameter: float | None) -> bool:
    """Whether masks are computed at the image's resolution (else at the network's, then enlarged)."""
    factor = seg.diam_mean / diameter if diameter else 1.0
    return factor >= RESAMPLE_MIN_FACTOR


def _eval(
    seg: LoadedSegmenter,
    x: np.ndarray,
    kw: dict[str, Any],
    params: SegmentParams,
    diameter: float | None,
    resample: bool | None = None,
    augment: bool = False,
) -> np.ndarray:
    import torch

    smooth = resample is None  # a segmentation's own masks (not a look's): smooth enlarged outlines
    if resample is None:
        resample = follows_full_resolution(seg, diameter)
    # Cellpose's mask step builds sparse tensors; opting out of torch's invariant checks explicitly
    # (its default) keeps a warning about them from reaching every user's console
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        masks = seg.model.eval(
            x,
            diameter=diameter,
            flow_threshold=params.flow_threshold,
            cellprob_threshold=params.cellprob_threshold,
            min_size=params.min_size,
            max_size_fraction=params.max_size_fraction,
            resample=resample,
            augment=augment,
            **kw,
        )[0]
    masks = np.asarray(masks, dtype=np.uint32)
    if smooth and not resample and diameter:
        masks = smooth_enlarged_masks(masks, diameter / seg.diam_mean)
    return masks


def _median_diameter(labels: np.ndarray, interior: bool = False, min_cells: int = 3) -> float | None:
    """Median equivalent diameter of the cells (``interior``: of those not cut by the border)."""
    if interior:
        from skimage.segmentation import clear_border

        inner = clear_border(labels)
        if len(np.unique(inner)) - 1 >= min_cells:
            labels = inner
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if len(areas) < min_cells:
        return None
    return float(np.median(2 * np.sqrt(areas / np.pi)))


#: an automatic diameter further than this factor from the model's own scale is not trusted
MAX_RESCALE = 4.0

#: side (px) of a look of the automatic diameter: one 224 px network tile once Cellpose has padded
#: it by 8 px on each side
_LOOK = 208
#: a look is near its scale when its cells are within this factor of it
NEAR_SCALE = 1.5
#: a coarser look near its scale whose cells are at least this many times larger than those of the
#: look taken so far shows that look's cells were fragments of larger cells
FRAGMENT_RATIO = 1.4


def _plausible_diameter(d: float | None, diam_mean: float) -> float | None:
    """``d`` if it is within :data:`MAX_RESCALE` of the model's scale, else None."""
    if d is None or not (diam_mean / MAX_RESCALE <= d <= diam_mean * MAX_RESCALE):
        return None
    return d


def estimate_diameter(
    seg: LoadedSegmenter, norm: Any, params: SegmentParams, min_cells: int = 5
) -> float | None:
    """Cell diameter (px) of an image, from a few cheap looks at its centre.

    Each look is one network tile: a 208 px window at full resolution, then 416 px at half
    resolution, 832 px at a quarter and 1664 px at an eighth, until a look holds the whole image. A
    look is believed when it finds ``min_cells`` cells and the median diameter of those not cut by the
    window's border lies in the range that look can see (half to twice its scale; the first look also
    accepts small cells down to 1/:data:`MAX_RESCALE` of the model's scale). The finest look whose
    cells are within 1.5x of its scale is taken, unless a coarser look is near its scale too and
    finds cells at least :data:`FRAGMENT_RATIO` times larger: cells two or three times the model's
    scale (a CellaVision field at full resolution) break up at full resolution into fragments near
    the model's scale, which a coarser look sees whole. Without a look near its scale, the believed
    look nearest its own scale wins. Returns None when no look is believed (segment at the model's
    own scale).
    """
    h, w = norm.height, norm.width
    s = seg.diam_mean
    believed: list[tuple[float, float]] = []  # (how far from the look's own scale, diameter)
    fallback: tuple[int, float] | None = None
    taken: float | None = None  # the cells of a look near its scale (or fragments of larger ones)
    for k in range(4):
        f = 2**k
        half = _LOOK * f // 2
        y0, x0 = max(0, h // 2 - half), max(0, w // 2 - half)
        win = norm(y0, min(h, y0 + 2 * half), x0, min(w, x0 + 2 * half))
        x, kw = _prepare(seg, win)
        labels = _eval(seg, x, kw, params, s * f if f > 1 else None, resample=False)
        d = _median_diameter(labels, interior=True)
        n = len(np.unique(labels)) - 1
        low = s / MAX_RESCALE if k == 0 else s * f / 2
        if d is not None and low <= d <= 2 * s * f and n >= min_cells:
            off = abs(np.log(d / (s * f)))
            believed.append((off, d))
            if off <= np.log(NEAR_SCALE) and (taken is None or d >= FRAGMENT_RATIO * taken):
                taken = d
        if _plausible_diameter(d, s) is not None and (fallback is None or n > fallback[0]):
            fallback = (n, d)
        if win.shape[0] == h and win.shape[1] == w and max(h, w) / (2 * f) < 3 * s:
            break  # the whole image is in view; a coarser look would be under 3 cells wide
    if taken is not None:
        return taken
    if believed:
        return min(believed)[1]  # the look whose scale was nearest the cells' size
    return fallback[1] if fallback is not None else None


def segmentation_diameter(
    seg: LoadedSegmenter, norm: Any, params: SegmentParams, info: dict[str, Any] | None = None
) -> float | None:
    """The diameter an image is segmented at: the given one, or the automatic estimate.

    None means the model's own scale (no estimate, or one within 10 % of that scale, which the
    network tolerates without resampling). ``info``, when given, receives ``diameter_used_px`` (the
    cell diameter the image was taken to have) and ``diameter_from`` (``given``, ``automatic`` or
    ``model scale``, when no look of the automatic diameter was believed).
    """
    if params.diameter is not None:
        d, source = params.diameter, "given"
    else:
        d = estimate_diameter(seg, norm, params)  # a few one-tile looks at the centre of the image
        source = "automatic" if d is not None else "model scale"
    if info is not None:
        info.update(diameter_used_px=round(float(d or seg.diam_mean), 1), diameter_from=source)
    if source == "given":
        return d
    return d if d is not None and abs(d / seg.diam_mean - 1) > 0.1 else None


def _with_large_cells(
    seg: LoadedSegmenter,
    x: np.ndarray,
    kw: dict[str, Any],
    params: SegmentParams,
    diameter: float | None,
    fine: np.ndarray,
) -> np.ndarray:
    """``fine`` plus the big cells a pass at twice the diameter finds and ``fine`` missed."""
    from .large_cells import COARSE_FACTOR, add_large_cells

    big = COARSE_FACTOR * (diameter or seg.diam_mean)
    if min(x.shape[-2:]) < big:  # a field smaller than one such cell: nothing to add
        return fine
    # masks at the network's resolution, enlarged: following the flows at full resolution would cost
    # more than the network itself and big cells do not need it
    coarse = _eval(seg, x, kw, params, big, resample=False, augment=params.augment)
    return add_large_cells(fine, smooth_enlarged_masks(coarse, big / seg.diam_mean), big)[0]


def _with_platelets(rgb01: np.ndarray, labels: np.ndarray, diameter: float) -> np.ndarray:
    """``labels`` plus the platelets between its cells, sized against the cells found."""
    from .platelets import add_platelets

    found = _median_diameter(labels, interior=True, min_cells=5)
    return add_platelets(rgb01, labels, found or diameter)[0]


def _check(params: SegmentParams) -> None:
    if params.diameter is not None and params.diameter <= 0:
        raise InputError("diameter must be positive (or empty for automatic)")
    if not 0 < params.max_size_fraction <= 1:
        raise InputError("max_size_fraction must be in (0, 1]")
    if not 0 <= params.border_pad <= 4:
        raise InputError("border_pad must be between 0 and 4 cell diameters")


def border_pad_pixels(seg: LoadedSegmenter, params: SegmentParams, diameter: float | None) -> int:
    """Pixels of mirrored image added beyond each image edge (``params.border_pad`` diameters)."""
    return int(round(params.border_pad * (diameter or seg.diam_mean)))


def _pad_widths(box: tuple[int, int, int, int], shape: tuple[int, int], pad: int) -> tuple:
    """Mirror only the tile sides that are image edges (inner sides have real neighbours)."""
    y0, y1, x0, x1 = box
    h, w = shape
    ty, tx = y1 - y0, x1 - x0
    # np.pad's reflect needs fewer pixels than the side has
    top, bottom = (min(pad, ty - 1) if c else 0 for c in (y0 == 0, y1 == h))
    left, right = (min(pad, tx - 1) if c else 0 for c in (x0 == 0, x1 == w))
    return (top, bottom), (left, right)


def _unpad(m: np.ndarray, widths: tuple, min_size: int) -> np.ndarray:
    """Cut the mirrored margin off; drop what is left of cells that lay mostly in it."""
    (top, bottom), (left, right) = widths
    m = m[top : m.shape[0] - bottom, left : m.shape[1] - right]
    if min_size > 0 and m.any():
        counts = np.bincount(m.ravel())
        small = np.flatnonzero((counts > 0) & (counts < min_size))
        small = small[small > 0]
        if len(small):
            m = np.where(np.isin(m, small), 0, m).astype(m.dtype)
    return m


def _sized_to_tile(params: SegmentParams, tile: tuple[int, int], padded: tuple[int, int]) -> SegmentParams:
    """The size limit as a fraction of the tile itself, not of the tile with its mirrored margin.

    Cellpose measures ``max_size_fraction`` against the image it is given; with the margin a
    single-cell image's cell (42 % of it) fell under a 0.4 limit it exceeds.
    """
    if tile == padded:
        return params
    share = (tile[0] * tile[1]) / (padded[0] * padded[1])
    return replace(params, max_size_fraction=params.max_size_fraction * share)


def iter_segment(
    image: np.ndarray,
    params: SegmentParams | None = None,
    should_stop: Callable[[], bool] | None = None,
    info: dict[str, Any] | None = None,
    *,
    name: str = "image",
) -> Iterator[tuple[int, int] | np.ndarray]:
    """Segment one 2D image; yields ``(tiles_done, tiles_total)`` then the uint32 labels.

    ``info``, when given, receives the diameter the image was segmented at
    (:func:`segmentation_diameter`), for the audit trail. ``name`` (e.g. the file name) names the
    image in the message of an image that cannot be segmented.
    """
    from ..io.images import RGBNormaliser

    params = params or SegmentParams()
    _check(params)
    norm = RGBNormaliser(image, name)  # converts tile by tile: memory stays bounded for huge images
    h, w = norm.height, norm.width
    preview = norm.preview()
    if float(preview.max() - preview.min()) < 1e-3:
        if info is not None:
            info.update(diameter_used_px=None, diameter_from="blank image")
        yield (1, 1)
        yield np.zeros((h, w), np.uint32)
        return
    del preview
    seg = load_segmenter(params.model, params.gpu)
    diameter = segmentation_diameter(seg, norm, params, info)
    tiles = _tiles(h, w, params.tile_size, params.tile_overlap)
    pad = border_pad_pixels(seg, params, diameter)
    labels = np.zeros((h, w), np.uint32)
    next_id = 1
    for i, (y0, y1, x0, x1) in enumerate(tiles):
        if should_stop is not None and should_stop():
            raise Cancelled("segmentation cancelled")
        tile = norm(y0, y1, x0, x1)
        if float(tile.max() - tile.min()) < 1e-3:  # empty background: nothing to find
            m = np.zeros(tile.shape[:2], np.int32)
        else:
            widths = _pad_widths((y0, y1, x0, x1), (h, w), pad)
            padded = np.pad(tile, (*widths, (0, 0)), mode="reflect") if pad else tile
            x, kw = _prepare(seg, padded)
            tile_params = _sized_to_tile(params, tile.shape[:2], padded.shape[:2])
            del padded
            m = _eval(seg, x, kw, tile_params, diameter, augment=params.augment)
            if params.large_cells:
                m = _with_large_cells(seg, x, kw, tile_params, diameter, m)
            if pad:
                m = _unpad(m, widths, params.min_size)
            if params.platelets:
                m = _with_platelets(tile, m, diameter or seg.diam_mean)
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


def segment(
    image: np.ndarray,
    params: SegmentParams | None = None,
    *,
    info: dict[str, Any] | None = None,
    name: str = "image",
    **kwargs: Any,
) -> np.ndarray:
    """Segment a 2D image (or each plane of a stack) → uint32 labels.

    Parameters
    ----------
    image
        (H, W), (H, W, C) or a stack (Z, H, W[, C]) processed plane by plane.
    params
        :class:`SegmentParams`; keyword arguments override its fields.
    info
        Receives ``diameter_used_px`` and ``diameter_from`` (see :func:`segmentation_diameter`);
        for a stack, lists of them, one per plane.
    name
        Names the image (e.g. its file name) in the message of an image that cannot be segmented.
    """
    params = params or SegmentParams()
    if kwargs:
        params = SegmentParams(**{**params.to_dict(), **kwargs})
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[-1] < MIN_IMAGE_SIDE:
        # read as a stack, its planes would be a few pixels wide: an image with other channels
        raise InputError(
            f"{name}: an image of shape {arr.shape} has {arr.shape[-1]} channels in its last axis; "
            "expected a grayscale or RGB(A) image, or a stack of them (planes first)"
        )
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        planes, found = [], []
        for i, plane in enumerate(arr):
            found.append({})
            planes.append(segment(plane, params, info=found[-1], name=f"{name}, plane {i + 1}"))
        if info is not None:
            info.update({k: [f.get(k) for f in found] for k in ("diameter_used_px", "diameter_from")})
        return np.stack(planes)
    out = None
    for item in iter_segment(arr, params, info=info, name=name):
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
