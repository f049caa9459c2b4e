"""Cellpose's mask thresholds (flow error, cell probability) against real references.

The network runs once per field (automatic diameter, as ``segment`` does); masks are then computed
from the same flows for every pair of thresholds, so the sweep costs little more than one
segmentation. Prints, per setting, BBBC041 val AP50 / F1 (masks) and TXL-PBC val detection F1
(boxes; red and white cells per source), so that a setting is only trusted when it helps on both
independent sets — not when it fits one of them.

Usage::

    python benchmarks/segmentation_thresholds.py --bbbc ../shared/data/bbbc041 \
        --txl ../shared/data/txl_pbc [--every 4] [--flow 0.3 0.4 0.6] [--cellprob -1 0 1] [--out F.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def flows(seg, image: np.ndarray, params) -> tuple[np.ndarray, np.ndarray, float]:
    """Flows and cell probability of one field, and the flow iterations to follow.

    As in ``segment``: at full resolution, or at the network's for cells over twice its scale.
    """
    from napari_cytodiffusion.io.images import RGBNormaliser
    from napari_cytodiffusion.segmentation.cellpose_seg import (
        _prepare,
        follows_full_resolution,
        segmentation_diameter,
    )

    norm = RGBNormaliser(image)
    diameter = segmentation_diameter(seg, norm, params)
    resample = follows_full_resolution(seg, diameter)
    x, kw = _prepare(seg, norm(0, norm.height, 0, norm.width))
    _, fl, _ = seg.model.eval(x, diameter=diameter, resample=resample, compute_masks=False, **kw)
    return fl[1], fl[2], 200 * diameter / seg.diam_mean if resample and diameter else 200


def masks(dp, cellprob, niter: float, flow: float, prob: float, params, shape: tuple[int, int]):
    """Cellpose's masks from the flows with the given thresholds, at the field's size."""
    from cellpose import dynamics

    m = dynamics.resize_and_compute_masks(
        dp,
        cellprob,
        niter=int(niter),
        cellprob_threshold=prob,
        flow_threshold=flow,
        min_size=params.min_size,
        max_size_fraction=params.max_size_fraction,
        resize=None if cellprob.shape == shape else list(shape),
    )
    return np.asarray(m, np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bbbc", type=Path, required=True)
    ap.add_argument("--txl", type=Path, required=True)
    ap.add_argument("--every", type=int, default=4, help="every Nth TXL-PBC val field")
    ap.add_argument("--flow", type=float, nargs="+", default=[0.3, 0.4, 0.6])
    ap.add_argument("--cellprob", type=float, nargs="+", default=[-1.0, 0.0, 1.0])
    ap.add_argument("--model", default="smear")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from napari_cytodiffusion.evaluate.segmentation import (
        instances_from_mask,
        read_yolo,
        score_boxes,
        score_masks,
        summarise,
    )
    from napari_cytodiffusion.evaluate.segmentation_report import YOLO_CLASS_NAMES
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams, load_segmenter

    params = SegmentParams(model=args.model)
    seg = load_segmenter(params.model)
    settings = list(itertools.product(args.flow, args.cellprob))
    rows: dict[tuple[str, str], dict] = defaultdict(
        lambda: defaultdict(list)
    )  # (set, source) → setting → rows
    fields = [("bbbc041", "bbbc041", f, args.bbbc / "val" / "masks" / f"{f.stem}.png")
              for f in sorted((args.bbbc / "val" / "images").glob("*.jpg"))]  # fmt: skip
    for f in sorted((args.txl / "images" / "val").glob("*.jpg"))[:: args.every]:
        lab = args.txl / "labels" / "val" / f"{f.stem}.txt"
        if lab.is_file():
            fields.append(("txl", "", f, lab))
    t0 = time.perf_counter()
    for k, (name, source, path, ref) in enumerate(fields, 1):
        img = read_image(path)
        h, w = img.shape[:2]
        dp, cp, niter = flows(seg, img, params)
        if name == "bbbc041":
            mask = np.asarray(read_image(ref))
            truth = instances_from_mask(mask[..., 0] if mask.ndim == 3 else mask)
        else:
            source = f"{w}x{h}"
            classes, boxes = read_yolo(ref, h, w)
        for s in settings:
            pred = masks(dp, cp, niter, s[0], s[1], params, (h, w))
            row = score_masks(truth, pred) if name == "bbbc041" else score_boxes(classes, boxes, pred)
            rows[(name, source)][s].append(row)
        print(
            f"[{k}/{len(fields)}] {path.name} {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True
        )

    report = []
    for s in settings:
        line = {"flow_threshold": s[0], "cellprob_threshold": s[1]}
        txl_all = []
        for (name, source), by_setting in sorted(rows.items()):
            r = by_setting[s]
            if name == "bbbc041":
                m = summarise(r, "masks")
                line["bbbc041_ap50"], line["bbbc041_f1"] = m["ap50"], m["f1"]
            else:
                txl_all += r
                m = summarise(r, "yolo", YOLO_CLASS_NAMES)
                pc = m.get("per_class", {})
                line[f"txl_{source}_rbc_f1"] = pc.get("rbc", {}).get("f1")
                line[f"txl_{source}_wbc_f1"] = pc.get("wbc", {}).get("f1")
        line["txl_f1"] = summarise(txl_all, "yolo", YOLO_CLASS_NAMES)["f1"]
        report.append(line)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in line.items()}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
