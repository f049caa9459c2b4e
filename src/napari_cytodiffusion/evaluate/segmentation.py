"""Segmentation quality against references of three kinds.

- masks (label images, or binary masks split into connected components): instance AP at IoU 0.5
  and 0.75, and the Dice of each reference cell with its best predicted instance;
- YOLO boxes (``class cx cy w h``): detection precision/recall/F1 at box IoU >= 0.5, overall and
  per class;
- points (``x y [type]``, one per cell): count error and how many points fall in exactly one cell.

Per-image scores are summed into one report, overall and per image size (for collections such as
TXL-PBC whose sources differ by image size).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: with 4-connectivity, binary-mask components this small are the pixels a thin gap leaves where
#: it cuts a diagonal touch between two cells (1-pixel pieces on BBBC041Seg), not cells
GAP_FRAGMENT_PX = 5


def instances_from_mask(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """A label image stays as is; a binary/0-255 mask becomes connected components.

    ``connectivity`` 8 (default) joins pixels that touch at a corner; 4 only along an edge, so a
    one-pixel gap drawn between touching cells separates them even where it runs diagonally
    (components under :data:`GAP_FRAGMENT_PX` pixels are then dropped).
    """
    from skimage.measure import label

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    values = np.unique(mask)
    if len(values) > 2:  # a label image: its ids, checked, numbered 1..N where they are very large
        from ..segmentation.table import check_labels, compact_labels

        return compact_labels(check_labels(mask))[0].astype(np.int32)
    lab = label(mask > 0, connectivity=1 if connectivity == 4 else 2)
    if connectivity == 4:
        from skimage.segmentation import relabel_sequential

        areas = np.bincount(lab.ravel())
        lab[(areas < GAP_FRAGMENT_PX)[lab] & (lab > 0)] = 0
        lab = relabel_sequential(lab)[0]
    return lab.astype(np.int32)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every ground-truth and predicted instance (sparse overlap counting)."""
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    ng, npred = int(g.max(initial=0)), int(p.max(initial=0))
    overlap = np.bincount(g * (npred + 1) + p, minlength=(ng + 1) * (npred + 1)).reshape(ng + 1, npred + 1)
    area_g, area_p = overlap.sum(axis=1), overlap.sum(axis=0)
    inter = overlap[1:, 1:].astype(float)
    union = area_g[1:, None] + area_p[None, 1:] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (reference, prediction) pairs with IoU >= threshold, greedy by IoU.

    For thresholds >= 0.5 an instance can overlap at most one other by more than half, so greedy
    matching is exact there.
    """
    if iou.size == 0:
        return []
    pairs = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_g: set[int] = set()
    used_p: set[int] = set()
    out = []
    for i, j in pairs[order]:
        if i not in used_g and j not in used_p:
            used_g.add(int(i))
            used_p.add(int(j))
            out.append((int(i), int(j)))
    return out


def match(iou: np.ndarray, threshold: float) -> int:
    """Number of one-to-one matches with IoU >= threshold."""
    return len(match_pairs(iou, threshold))


def average_precision(tp: int, n_gt: int, n_pred: int) -> float:
    """Cellpose/StarDist-style AP at one threshold: TP / (TP + FP + FN)."""
    denom = n_gt + n_pred - tp
    return tp / denom if denom else 1.0


def boxes_from_labels(labels: np.ndarray) -> np.ndarray:
    from skimage.measure import regionprops

    return np.array([r.bbox for r in regionprops(labels)], float).reshape(-1, 4)  # y0, x0, y1, x1


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def read_yolo(path, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """YOLO ``class cx cy w h`` (normalised) → (classes, boxes y0 x0 y1 x1 in pixels)."""
    rows = [ln.split() for ln in open(path).read().splitlines() if ln.strip()]
    if not rows:
        return np.zeros(0, int), np.zeros((0, 4))
    arr = np.array([[float(v) for v in r[:5]] for r in rows])
    cls = arr[:, 0].astype(int)
    cx, cy, bw, bh = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
    return cls, np.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], axis=1)


def read_points(path) -> np.ndarray:
    """Point annotations ``x y [type]`` per line → (N, 2) array of (row, column)."""
    rows = [ln.split() for ln in open(path).read().splitlines() if ln.strip()]
    arr = np.array([[float(r[1]), float(r[0])] for r in rows], float).reshape(-1, 2)
    return arr


def score_masks(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Instance matches of one image at IoU 0.5 and 0.75, and Dice per reference cell.

    Label values need not be consecutive (e.g. a mask with values 128 and 255, or labels left
    after small cells were removed): both images are relabelled 1..N first.
    """
    from skimage.segmentation import relabel_sequential

    truth = relabel_sequential(np.asarray(truth, np.int64))[0]
    pred = relabel_sequential(np.asarray(pred, np.int64))[0]
    iou = iou_matrix(truth, pred)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])
    alone = iou.max(axis=0) == 0 if iou.shape[0] else np.ones(iou.shape[1], bool)
    edge = np.unique(np.concatenate([pred[0], pred[-1], pred[:, 0], pred[:, -1]]))
    edge = edge[edge > 0] - 1
    return {
        "n_true": int(iou.shape[0]),
        "n_pred": int(iou.shape[1]),
        "tp50": match(iou, 0.5),
        "tp75": match(iou, 0.75),
        # predictions cut by the image border that overlap no reference cell at all: references that
        # leave out border slivers (BBBC041Seg) count these as false positives
        "border_pred_without_reference": int(alone[edge].sum()),
        **_shared_references(truth, pred, iou),
        # Dice of a reference cell with its best-overlapping prediction (0 when none): 2 IoU / (1 + IoU)
        "dice": [float(2 * v / (1 + v)) for v in best],
    }


def _shared_references(truth: np.ndarray, pred: np.ndarray, iou: np.ndarray) -> dict[str, int]:
    """References that two or more predictions lie mostly (> half their area) inside.

    Either the segmentation split a cell, or the reference joined touching cells (connected
    components of a binary mask whose separating gap is incomplete: BBBC041Seg); predictions of
    such a reference that do not match it are counted apart, so the two cases can be looked at.
    """
    n_true, n_pred = iou.shape
    if not n_true or not n_pred:
        return {"references_shared_by_predictions": 0, "pred_in_shared_reference": 0}
    g, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    overlap = np.bincount(g * (n_pred + 1) + p, minlength=(n_true + 1) * (n_pred + 1))
    overlap = overlap.reshape(n_true + 1, n_pred + 1)[1:, 1:]
    area_pred = np.bincount(p, minlength=n_pred + 1)[1:]
    inside = overlap > 0.5 * area_pred[None, :]
    shared = inside.sum(axis=1) >= 2
    matched = {j for _, j in match_pairs(iou, 0.5)}
    in_shared = [j for j in np.flatnonzero(inside[shared].any(axis=0)) if int(j) not in matched]
    return {"references_shared_by_predictions": int(shared.sum()), "pred_in_shared_reference": len(in_shared)}


def score_boxes(classes: np.ndarray, boxes: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Box detection of one image: matches at IoU >= 0.5 overall and per reference class.

    Predictions carry no class. A matched prediction counts for its reference box's class; an
    unmatched one is a false positive of the class of the reference box it overlaps most, or of
    no class when it overlaps none (it then only lowers the overall precision).
    """
    pboxes = boxes_from_labels(pred)
    iou = box_iou(boxes, pboxes)
    pairs = match_pairs(iou, 0.5)
    matched_p = {j for _, j in pairs}
    per_class: dict[str, dict[str, int]] = {}
    for c in np.unique(classes):
        per_class[str(int(c))] = {"tp": 0, "fp": 0, "n_true": int((classes == c).sum())}
    for i, _ in pairs:
        per_class[str(int(classes[i]))]["tp"] += 1
    for j in range(len(pboxes)):
        if j in matched_p or not len(boxes) or iou[:, j].max() <= 0:
            continue
        per_class[str(int(classes[int(iou[:, j].argmax())]))]["fp"] += 1
    return {"n_true": len(boxes), "n_pred": len(pboxes), "tp50": len(pairs), "per_class": per_class}


def red_cell_count(pred: np.ndarray, low: float = 0.5, high: float = 2.0) -> int:
    """Red cells of one field by a counting rule: whole cells of red-cell size.

    Cells touching the image border are left out (they are counted in the neighbouring field),
    and so are cells whose equivalent diameter is below ``low`` (platelets, fragments) or above
    ``high`` (white cells, clumps) times the median diameter of the field's whole cells.
    """
    from skimage.segmentation import clear_border

    areas = np.bincount(clear_border(np.asarray(pred, np.int64)).ravel())[1:]
    d = 2 * np.sqrt(areas[areas > 0] / np.pi)
    if not len(d):
        return 0
    med = float(np.median(d))
    return int(((d >= low * med) & (d <= high * med)).sum())


def score_points(points: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Counting against one point per cell: found = points alone in a predicted cell.

    ``n_pred`` counts every predicted cell; ``n_pred_red_cells`` only those
    :func:`red_cell_count` counts (for references that mark whole red cells only).
    """
    h, w = pred.shape
    rc = np.round(points).astype(int)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
    hit = np.zeros(len(points), np.int64)
    hit[inside] = pred[rc[inside, 0], rc[inside, 1]]
    n_pred = int(len(np.unique(pred[pred > 0])))
    per_cell = np.bincount(hit[hit > 0], minlength=int(pred.max()) + 1)
    return {
        "n_true": len(points),
        "n_pred": n_pred,
        "found": int(np.isin(hit, np.flatnonzero(per_cell == 1)).sum()),
        "missed": int((hit == 0).sum()),
        "merged_cells": int((per_cell >= 2).sum()),
        "cells_without_point": int(n_pred - (per_cell[1:] > 0).sum()),
        "n_pred_red_cells": red_cell_count(pred),
    }


def _prf(tp: int, n_true: int, n_pred: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def summarise(rows: list[dict[str, Any]], kind: str, class_names: dict[str, str] | None = None) -> dict:
    """Sum per-image scores (from the ``score_*`` functions) into one report."""
    n_true = sum(r["n_true"] for r in rows)
    n_pred = sum(r["n_pred"] for r in rows)
    out: dict[str, Any] = {"n_images": len(rows), "n_true": n_true, "n_pred": n_pred}
    if kind == "points":
        errs = [abs(r["n_pred"] - r["n_true"]) / r["n_true"] for r in rows if r["n_true"]]
        red = [r.get("n_pred_red_cells", r["n_pred"]) for r in rows]
        red_errs = [abs(p - r["n_true"]) / r["n_true"] for p, r in zip(red, rows, strict=True) if r["n_true"]]
        out.update(
            {
                "count_error_mean_abs_pct": 100 * float(np.mean(errs)) if errs else None,
                "count_error_total_pct": 100 * (n_pred - n_true) / n_true if n_true else None,
                # whole cells of red-cell size only (red_cell_count): what a red-cell count compares
                "red_cell_count_error_mean_abs_pct": 100 * float(np.mean(red_errs)) if red_errs else None,
                "red_cell_count_error_total_pct": 100 * (sum(red) - n_true) / n_true if n_true else None,
                "points_found": sum(r["found"] for r in rows) / n_true if n_true else None,
                "points_missed": sum(r["missed"] for r in rows) / n_true if n_true else None,
                "merged_cells": sum(r["merged_cells"] for r in rows),
                "cells_without_point": sum(r["cells_without_point"] for r in rows),
            }
        )
        return out
    tp50 = sum(r["tp50"] for r in rows)
    out["ap50"] = average_precision(tp50, n_true, n_pred)
    out["ap75"] = average_precision(sum(r["tp75"] for r in rows), n_true, n_pred) if kind == "masks" else None
    out.update(_prf(tp50, n_true, n_pred))
    if kind == "masks":
        dice = [d for r in rows for d in r["dice"]]
        out["mean_dice"] = float(np.mean(dice)) if dice else None
        for key in (
            "border_pred_without_reference",
            "references_shared_by_predictions",
            "pred_in_shared_reference",
        ):
            out[key] = sum(r.get(key, 0) for r in rows)
    if kind == "yolo":
        names = class_names or {}
        per: dict[str, dict[str, int]] = {}
        for r in rows:
            for c, d in r["per_class"].items():
                acc = per.setdefault(c, {"tp": 0, "fp": 0, "n_true": 0})
                for k in acc:
                    acc[k] += d[k]
        out["per_class"] = {
            names.get(c, c): {**d, **_prf(d["tp"], d["n_true"], d["tp"] + d["fp"])}
            for c, d in sorted(per.items())
        }
        out["recall_per_class"] = {k: v["recall"] for k, v in out["per_class"].items()}
    return out


def summarise_by_size(rows: list[dict[str, Any]], kind: str, class_names=None) -> dict[str, dict]:
    """:func:`summarise` per image size ("WxH"), only when the images differ in size."""
    sizes = sorted({r["size"] for r in rows})
    if len(sizes) < 2:
        return {}
    out = {}
    for s in sizes:
        sub = [r for r in rows if r["size"] == s]
        out[s] = summarise(sub, kind, class_names)
        secs = [r["seconds"] for r in sub if "seconds" in r]
        out[s]["seconds_per_image"] = float(np.mean(secs)) if secs else None
    return out
