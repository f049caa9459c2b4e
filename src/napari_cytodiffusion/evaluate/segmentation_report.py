"""Evaluate a segmentation over a folder of images against a folder of references.

The segmentation is either run here (Cellpose, :func:`~napari_cytodiffusion.segmentation.segment`)
or read from label images computed before (``segment`` or ``analyze`` outputs, or another tool's),
so the same report can score any segmentation.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .segmentation import (
    instances_from_mask,
    read_points,
    read_yolo,
    score_boxes,
    score_masks,
    score_points,
    summarise,
    summarise_by_size,
)

#: names of the YOLO classes of TXL-PBC / BCCD-style boxes
YOLO_CLASS_NAMES = {"0": "wbc", "1": "rbc", "2": "platelet"}


#: file names tried for an image ``NNN``'s reference, by kind, and for a saved label image
REFERENCE_SUFFIXES = {"masks": (".png", "_mask.png", ".tif", ".tiff"), "yolo": (".txt",), "points": (".txt",)}
LABEL_SUFFIXES = ("_labels.tif", ".tif", ".tiff", ".png")
KINDS = tuple(REFERENCE_SUFFIXES)


def _first_existing(
    folder: Path, stem: str, suffixes: tuple[str, ...], not_this: Path | None = None
) -> Path | None:
    """First ``folder/stem+suffix`` that exists and is not the file ``not_this`` (the image itself)."""
    for s in suffixes:
        cand = folder / f"{stem}{s}"
        if cand.exists() and not (not_this is not None and cand.resolve() == Path(not_this).resolve()):
            return cand
    return None


def reference_images(images: list[Path]) -> list[Path]:
    """Drop reference masks that sit beside their images (``NNN_mask.png`` next to ``NNN.png``)."""
    names = {p.stem for p in images}
    return [p for p in images if not (p.stem.endswith("_mask") and p.stem[: -len("_mask")] in names)]


def iter_evaluate_segmentation(
    images: list[Path],
    kind: str,
    reference: Path,
    params=None,
    predictions: Path | None = None,
    binary_masks: bool = False,
    mask_connectivity: int = 8,
) -> Generator[tuple[int, int, dict[str, Any]], None, dict[str, Any]]:
    """Score every image; yields ``(i, n, row)`` per image and returns the report.

    Parameters
    ----------
    images
        Image files.
    kind
        ``"masks"``, ``"yolo"`` or ``"points"``: what ``reference`` holds.
    reference
        Folder with one reference per image, named after it (``NNN.png|_mask.png|.tif``,
        ``NNN.txt``).
    params
        :class:`~napari_cytodiffusion.segmentation.SegmentParams` when segmenting here.
    predictions
        Folder of label images (``NNN_labels.tif``, ``NNN.tif``, ``NNN.png``) to score instead of
        segmenting.
    binary_masks
        Treat every non-zero mask value as foreground and split it into connected components
        (for masks whose values code parts of a cell, e.g. cytoplasm 128 and nucleus 255).
    mask_connectivity
        How a binary mask is split into cells: 8 (pixels touching at a corner join) or 4 (a
        one-pixel gap drawn between touching cells separates them even where it runs
        diagonally; see :func:`~.segmentation.instances_from_mask`).
    """
    from ..io.images import read_image
    from ..segmentation.table import check_labels, compact_labels

    if mask_connectivity not in (4, 8):
        raise InputError(f"mask connectivity must be 4 or 8, got {mask_connectivity}")
    if kind not in KINDS:
        raise InputError(f"unknown reference kind {kind!r}; use one of {', '.join(KINDS)}")
    reference = Path(reference)
    if not reference.is_dir():
        raise InputError(f"reference folder {reference} does not exist")
    if predictions is not None and not Path(predictions).is_dir():
        raise InputError(f"predictions folder {predictions} does not exist")
    images = reference_images(images)
    # images without a reference are skipped (and listed); none at all is an error below
    # an image is never its own reference (masks beside their images: NNN.png + NNN_mask.png)
    refs = {p.name: _first_existing(reference, p.stem, REFERENCE_SUFFIXES[kind], not_this=p) for p in images}
    skipped = [name for name, ref in refs.items() if ref is None]
    images = [p for p in images if refs[p.name] is not None]
    rows: list[dict[str, Any]] = []
    secs: list[float] = []
    for i, path in enumerate(images, 1):
        img = read_image(path)
        h, w = img.shape[:2]
        if predictions is not None:
            ppath = _first_existing(Path(predictions), path.stem, LABEL_SUFFIXES)
            if ppath is None:
                raise InputError(
                    f"no label image for {path.name} in {predictions} "
                    f"(looked for {', '.join(path.stem + s for s in LABEL_SUFFIXES)})"
                )
            pred = np.asarray(read_image(ppath))
            if pred.ndim == 3:
                pred = pred[..., 0]
            if pred.shape != (h, w):
                raise InputError(f"label image {ppath.name} is {pred.shape}, but {path.name} is {(h, w)}")
            try:
                pred = compact_labels(check_labels(pred))[0].astype(np.int64)  # ids do not matter here
            except InputError as exc:
                raise InputError(f"label image {ppath.name}: {exc}") from None
        else:
            from ..segmentation.cellpose_seg import segment

            t0 = time.perf_counter()
            pred = segment(img, params)
            secs.append(time.perf_counter() - t0)
        if kind == "masks":
            mask = np.asarray(read_image(refs[path.name]))
            if mask.ndim == 3:
                if not (mask[..., :3] == mask[..., :1]).all():
                    raise InputError(f"reference {refs[path.name].name} is a colour image, not a mask")
                mask = mask[..., 0]
            truth = instances_from_mask(
                (mask > 0).astype(np.uint8) if binary_masks else mask, connectivity=mask_connectivity
            )
            if truth.shape != pred.shape:
                from skimage.transform import resize

                truth = resize(truth, pred.shape, order=0, preserve_range=True, anti_aliasing=False)
                truth = truth.astype(np.int32)
            row = score_masks(truth, pred)
        elif kind == "yolo":
            classes, boxes = read_yolo(refs[path.name], h, w)
            row = score_boxes(classes, boxes, pred)
        else:
            row = score_points(read_points(refs[path.name]), pred)
        row = {"image": path.name, "size": f"{w}x{h}", **row}
        if secs and predictions is None:
            row["seconds"] = secs[-1]
        rows.append(row)
        yield i, len(images), row
    if not rows:
        raise InputError(
            f"no images to evaluate: none of the {len(skipped)} images has a reference in {reference}"
            if skipped
            else "no images to evaluate"
        )
    names = YOLO_CLASS_NAMES if kind == "yolo" else None
    report = summarise(rows, kind, names)
    report["seconds_per_image"] = float(np.mean(secs)) if secs else None
    report["skipped_without_reference"] = skipped
    if kind == "masks":
        report["reference_masks"] = {"binary": binary_masks, "connectivity": mask_connectivity}
    report["by_image_size"] = summarise_by_size(rows, kind, names)
    report["segmentation"] = (
        {"labels_from": str(predictions)} if predictions is not None else (params.to_dict() if params else {})
    )
    report["per_image"] = [
        {k: v for k, v in r.items() if k != "dice"}
        | ({"mean_dice": float(np.mean(r["dice"])) if r["dice"] else None} if "dice" in r else {})
        for r in rows
    ]
    return report
