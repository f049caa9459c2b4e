"""Does the review page put the wrong calls in front of the reader?

Classifies PBC **val** cell images (never used for training or calibration) with ``classify`` (or reads
an earlier run's output folder), writes its review page (``report.html``), and compares with the
images' true classes:

- how many cells are flagged, and how many of the wrong calls are among them;
- how many wrong calls *Review first* shows in its first K pictures (K = 10, 30, 60, all), i.e. what a
  reader who looks at those sees;
- the page's time, size and the process's peak memory.

    python benchmarks/review_queue.py --out runs/review_queue [--model default] [--speed balanced]
        [--n 0 (all 1,690)] [--reuse]

Measured figures: docs/measurements.md, *Review page*.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", required=True, help="classify's output folder (its report.html is written there)"
    )
    ap.add_argument("--model", default="default")
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--n", type=int, default=0, help="first N val images (0: all)")
    ap.add_argument("--reuse", action="store_true", help="use the predictions already in --out")
    a = ap.parse_args()

    import numpy as np
    import pandas as pd

    from napari_cytodiffusion.batch._generators import _run_to_end
    from napari_cytodiffusion.report import write_report
    from napari_cytodiffusion.report.collect import iter_collect

    labels = pd.read_csv(SHARED / "pbc" / "labels.csv")
    val = labels[labels["split"] == "val"]
    if a.n:
        val = val.iloc[: a.n]
    out = Path(a.out)
    if not (a.reuse and (out / "predictions.csv").is_file()):
        files = [str(SHARED / "pbc" / p) for p in val["path"]]
        cmd = [sys.executable, "-m", "napari_cytodiffusion.cli.main", "classify", *files, "--out", str(out)]
        subprocess.run([*cmd, "--model", a.model, "--speed", a.speed], check=True)
    truth = dict(zip(val["path"].str.split("/").str[-1], val["class"], strict=True))
    pred = pd.read_csv(out / "predictions.csv")
    pred["truth"] = [truth[Path(p).name] for p in pred["path"]]
    wrong = pred["class"] != pred["truth"]

    t0 = time.perf_counter()
    page = write_report(out)
    seconds = time.perf_counter() - t0
    data = _run_to_end(iter_collect(out, max_review=len(pred)))  # the whole queue, in the page's order
    queue = np.array([truth[c.image] != c.predicted for c in data.review], dtype=bool)
    figures = {
        "cells": len(pred),
        "wrong_calls": int(wrong.sum()),
        "flagged": int(pred["flagged"].sum()),
        "wrong_and_flagged": int((wrong & pred["flagged"]).sum()),
        "flag_reasons": pred["flag_reason"].fillna("").value_counts().to_dict(),
        "wrong_in_first": {str(k): int(queue[:k].sum()) for k in (10, 30, 60, len(queue))},
        "report_seconds": round(seconds, 2),
        "report_mb": round(page.stat().st_size / 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(figures, indent=1))
    print(
        f"{figures['wrong_and_flagged']} of {figures['wrong_calls']} wrong calls flagged "
        f"({figures['flagged']} flagged); Review first: {figures['wrong_in_first']['60']} wrong calls in its "
        f"60 pictures, {figures['wrong_in_first']['30']} in the first 30; page {figures['report_seconds']} s, "
        f"{figures['report_mb']} MB"
    )
    (out / "review_queue.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
