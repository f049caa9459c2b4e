"""Segmentation quality: instance AP against masks, detection F1 against YOLO boxes."""

from __future__ import annotations

import numpy as np


def instances_from_mask(mask: np.ndarray) -> np.ndarray:
    """A label image stays as is; a binary/0-255 mask becomes connected components."""
    from skimage.measure import label

    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    values = np.unique(mask)
    if len(values) <= 2:
        return label(mask > 0).astype(np.int32)
    return mask.astype(np.int32)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every ground-truth and predicted instance (sparse overlap counting)."""
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    ng, npred = int(g.max(initial=0)), int(p.max(initial=0))
    overlap = np.bincount(g * (npred + 1) + p, minlength=(ng + 1) * (npred + 1)).reshape(ng + 1, npred + 1)
    area_g, area_p = overlap.sum(axis=1), overlap.sum(axis=0)
    inter = overlap[1:, 1:].astype(float)
    union = area_g[1:, None] + area_p[None, 1:] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(iou: np.ndarray, threshold: float) -> int:
    """Number of one-to-one matches with IoU >= threshold (greedy by IoU; exact for thr >= 0.5)."""
    if iou.size == 0:
        return 0
    pairs = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]])
    used_g, used_p, tp = set(), set(), 0
    for i, j in pairs[order]:
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            tp += 1
    return tp


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
