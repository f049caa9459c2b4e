"""What the whole pipeline calls the cells of real smears, against TXL-PBC's boxes.

The classifier is measured on single-cell crops elsewhere; this script asks what a user gets from a
*smear*: segment (shipped smear model), pick the stained cells, classify them (shipped diffusion
model), triage the field. TXL-PBC val boxes say which cells are white cells, red cells and
platelets (no white-cell subtypes), so per reference box matched to a segmented cell (box IoU >= 0.5)
we count what it became:

- white cells: called a white-cell class (neutrophil, lymphocyte, monocyte, eosinophil, basophil,
  ig), or erythroblast, or platelet, or left out as a red cell;
- platelets: called platelet, something else, or left out;
- red cells: left out (correct) or sent to the classifier, and called what;
- segmented cells sent to the classifier that match no box;
- per field: the verdict, and which reasons made it "needs review".

Results per source (the sources differ by image size: Kaggle BCCD 416², Raabin-WBC 575², BCCD
640×480) and overall. Usage::

    python benchmarks/smear_classification.py --txl ../shared/data/txl_pbc [--every 1] [--speed balanced]
        [--no-platelets] [--no-size-check] [--out smear_classification.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REFERENCE = {0: "white cell", 1: "red cell", 2: "platelet"}
SOURCES = {"416x416": "Kaggle", "575x575": "Raabin", "640x480": "BCCD"}
WHITE = {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig"}
LEFT_OUT = "not classified"


def reason_kind(reason: str) -> str:
    if "flagged (>" in reason:  # not "ig: 1 unflagged call", an alert
        return "flagged share"
    if "unlike the model's training cells" in reason:
        return "domain check"
    if "whose size rules out" in reason:
        return "size check"
    return reason.split(":")[0]  # an alert class, e.g. "erythroblast"


def _cell(t, j: int, reference: str | None, rel: float, classes: list[str]) -> dict:
    """One classified cell: its reference (None: no box), call, relative size, flags, probabilities."""
    r = t.iloc[j]
    return {
        "reference": reference,
        "called": r["class"],
        "by_appearance": r.get("class_by_appearance", r["class"]),
        "size_implausible": bool(r.get("size_implausible", False)),
        "touches_border": bool(r["touches_border"]),
        "size": round(float(rel), 3),
        "flagged": bool(r["flagged"]),
        "p_correct": round(float(r["p_correct"]), 4),
        "probs": [round(float(r[f"p_{c}"]), 4) for c in classes],
    }


def field(
    path: Path,
    labels_dir: Path,
    model,
    speed: str,
    platelets: bool = True,
    size_check: bool = True,
    labels: np.ndarray | None = None,
) -> dict:
    """One field through the pipeline (``labels``: a segmentation to reuse instead of segmenting)."""
    from napari_cytodiffusion.evaluate.segmentation import box_iou, match_pairs, read_yolo
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.pipeline import UNCLASSIFIED, analyze
    from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams

    image = read_image(path)
    h, w = image.shape[:2]
    t0 = time.perf_counter()
    res = analyze(
        image,
        model=model,
        speed=speed,
        seed=0,
        segment_params=SegmentParams(platelets=platelets),
        size_check=size_check,
        labels=labels,
    )
    seconds = time.perf_counter() - t0
    t = res.table
    ref_cls, ref_boxes = read_yolo(labels_dir / f"{path.stem}.txt", h, w)
    pred_boxes = t[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(float)
    pairs = match_pairs(box_iou(ref_boxes, pred_boxes), 0.5)
    outcome = Counter()
    matched = set()
    # each classified cell, with its size in the field's reference cells (pipeline.reference_diameter)
    rel = t["size"].to_numpy(float)
    cells = []
    for i, j in pairs:
        matched.add(j)
        called = t["class"].iloc[j]
        outcome[(REFERENCE[int(ref_cls[i])], LEFT_OUT if called == UNCLASSIFIED else called)] += 1
        if called != UNCLASSIFIED:
            cells.append(_cell(t, j, REFERENCE[int(ref_cls[i])], rel[j], model.classes))
    for i in set(range(len(ref_cls))) - {i for i, _ in pairs}:
        outcome[(REFERENCE[int(ref_cls[i])], "not segmented")] += 1
    extra = Counter(
        t["class"].iloc[j] for j in range(len(t)) if j not in matched and bool(t["classified"].iloc[j])
    )
    cells += [
        _cell(t, j, None, rel[j], model.classes)
        for j in range(len(t))
        if j not in matched and bool(t["classified"].iloc[j])
    ]
    s = res.summary
    return {
        "image": path.name,
        "source": SOURCES.get(f"{w}x{h}", f"{w}x{h}"),
        "seconds": seconds,
        "outcome": {f"{a}|{b}": k for (a, b), k in outcome.items()},
        "classified_without_box": dict(extra),
        "classified_cells": cells,
        "n_classified": s["n_classified"],
        "verdict": s["verdict"],
        "reasons": [reason_kind(r) for r in s["reasons"]],
        "domain_check": s["domain_check"],
    }


def report(rows: list[dict]) -> dict:
    outcome: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        for key, k in r["outcome"].items():
            ref, called = key.split("|")
            outcome[ref][called] += k
    extra = Counter()
    for r in rows:
        extra.update(r["classified_without_box"])

    def share(counter: Counter, keys) -> float | None:
        found = sum(v for k, v in counter.items() if k != "not segmented")
        return sum(counter[k] for k in keys) / found if found else None

    wbc, plt, rbc = outcome["white cell"], outcome["platelet"], outcome["red cell"]
    reasons = Counter(k for r in rows for k in set(r["reasons"]))
    n = len(rows)
    return {
        "fields": n,
        "white_cells_segmented": sum(v for k, v in wbc.items() if k != "not segmented"),
        "white_called_white_class": share(wbc, WHITE),
        "white_called_erythroblast": share(wbc, ["erythroblast"]),
        "white_called_platelet": share(wbc, ["platelet"]),
        "white_left_out": share(wbc, [LEFT_OUT]),
        "white_classes": dict(wbc),
        "platelets_segmented": sum(v for k, v in plt.items() if k != "not segmented"),
        "platelet_called_platelet": share(plt, ["platelet"]),
        "platelet_left_out": share(plt, [LEFT_OUT]),
        "platelet_classes": dict(plt),
        "red_cells_segmented": sum(v for k, v in rbc.items() if k != "not segmented"),
        "red_left_out": share(rbc, [LEFT_OUT]),
        "red_classes": {k: v for k, v in rbc.items() if k not in (LEFT_OUT,)},
        "classified_without_box": dict(extra),
        # cells whose size ruled out the class their appearance picked: reference|appearance -> call
        "size_recalled": dict(
            Counter(
                f"{c['reference'] or 'no box'}|{c['by_appearance']} -> {c['called']}"
                for r in rows
                for c in r.get("classified_cells", [])
                if c.get("size_implausible")
            ).most_common()
        ),
        # white cells cut by the image border (their visible size is less than their size) and whole ones
        "white_by_border": {
            kind: {
                "cells": len(sel),
                "called_white_class": sum(c["called"] in WHITE for c in sel) / len(sel) if sel else None,
                "size_recalled": sum(c["size_implausible"] for c in sel),
                "flagged": sum(c["flagged"] for c in sel) / len(sel) if sel else None,
            }
            for kind, cut in (("cut", True), ("whole", False))
            for sel in [
                [
                    c
                    for r in rows
                    for c in r.get("classified_cells", [])
                    if c["reference"] == "white cell" and c.get("touches_border") == cut
                ]
            ]
        },
        "needs_review_share": sum(r["verdict"] == "needs review" for r in rows) / n if n else None,
        "review_reason_share": {k: v / n for k, v in reasons.most_common()},
        "seconds_per_field": float(np.mean([r["seconds"] for r in rows])) if rows else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--txl", type=Path, required=True, help="the txl_pbc folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--every", type=int, default=1, help="use every k-th field")
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--model", default=None)
    ap.add_argument(
        "--no-platelets", dest="platelets", action="store_false", help="segment without the platelet pass"
    )
    ap.add_argument(
        "--no-size-check", dest="size_check", action="store_false", help="classify without the size prior"
    )
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from napari_cytodiffusion.model.registry import get_model

    model = get_model(a.model)
    images = sorted((a.txl / "images" / a.split).glob("*"))[:: a.every]
    rows = []
    for k, p in enumerate(images, 1):
        rows.append(field(p, a.txl / "labels" / a.split, model, a.speed, a.platelets, a.size_check))
        print(f"\r{k}/{len(images)} fields", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = {"all": report(rows)}
    for src in sorted({r["source"] for r in rows}):
        out[src] = report([r for r in rows if r["source"] == src])
    print(
        f"{'set':8s} {'fields':>6s} {'WBC→white':>9s} {'WBC→ery':>8s} {'PLT→plt':>8s} {'RBC out':>8s} "
        f"{'review':>7s}  reasons"
    )
    for name, r in out.items():
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"{name:8s} {r['fields']:6d} {fmt(r['white_called_white_class']):>9s} "
            f"{fmt(r['white_called_erythroblast']):>8s} {fmt(r['platelet_called_platelet']):>8s} "
            f"{fmt(r['red_left_out']):>8s} {fmt(r['needs_review_share']):>7s}  "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["review_reason_share"].items())
        )
    for name, r in out.items():
        print(f"{name:8s} white cells " + "; ".join(
            f"{kind} {v['cells']}: white class {fmt(v['called_white_class'])}, re-called by size "
            f"{v['size_recalled']}, flagged {fmt(v['flagged'])}" for kind, v in r["white_by_border"].items()
        ))  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps({"summary": out, "fields": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
