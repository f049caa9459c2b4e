"""Batch analysis of many smears, in this process or as dask.distributed tasks.

Per image: labels TIFF, cells CSV and summary JSON (with audit trail). For the cohort: one
CSV row per image and a log. Finished images (summary present) are skipped on re-runs; a bad
file fails alone with its error in the log.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .errors import CytoDiffusionError


def analyze_one(path: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """Segment + classify one image and write its outputs; returns a cohort row."""
    from .cli.commands_smear import write_smear_outputs
    from .io.images import read_image
    from .model.registry import get_model
    from .pipeline import analyze
    from .segmentation.cellpose_seg import SegmentParams

    p, o = Path(path), Path(out)
    t0 = time.perf_counter()
    if options.get("threads"):
        import torch

        # one worker per core share: several processes each running 2+ OpenMP threads on 2 cores
        # were measured 2-7x slower per image than one process (spin-waiting threads)
        if torch.get_num_threads() != int(options["threads"]):  # once per worker process, not per task
            torch.set_num_threads(int(options["threads"]))
    row: dict[str, Any] = {"image": p.name, "path": str(p)}
    try:
        image = read_image(p)
        model = get_model(options.get("model", "default"))  # cached: loaded once per worker process
        res = analyze(
            image,
            model=model,
            segment_params=SegmentParams(**options["segmentation"]),
            speed=options.get("speed", "balanced"),
            cells=options.get("cells", "stained"),
            min_area=options.get("min_area", 0),
            seed=options.get("seed", 0),
        )
        write_smear_outputs(res, o, p.stem, model, input_path=p)
        s = res.summary
        row.update(
            {
                "status": "ok",
                "n_cells": s["n_cells"],
                "n_classified": s["n_classified"],
                **{f"n_{c}": k for c, k in s["counts"].items()},
                "percent_flagged": s["percent_flagged"],
                "verdict": s["verdict"],
            }
        )
    except CytoDiffusionError as exc:
        row.update({"status": "error", "error": str(exc)})
    except Exception as exc:  # one bad file must not stop the cohort; full trace goes to the log
        row.update(
            {"status": "error", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        )
    row["seconds"] = time.perf_counter() - t0
    row["worker_pid"] = os.getpid()
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def _row_from_summary(path: Path, out: Path) -> dict[str, Any] | None:
    """A cohort row from an image's summary JSON (for outputs written by an interrupted run)."""
    import json

    f = out / f"{path.stem}_summary.json"
    if not f.is_file():
        return None
    try:
        s = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {
        "image": path.name,
        "path": str(path),
        "status": "ok",
        "n_cells": s.get("n_cells"),
        "n_classified": s.get("n_classified"),
        **{f"n_{c}": k for c, k in s.get("counts", {}).items()},
        "percent_flagged": s.get("percent_flagged"),
        "verdict": s.get("verdict"),
        "seconds": s.get("seconds", {}).get("total"),
    }


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (MB), where the platform reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def run_analysis(paths: list[Path], out: Path, args) -> int:
    import pandas as pd

    from .export import write_cells_csv
    from .io.atomic import write_text

    options = {
        "model": args.model,
        "speed": args.speed,
        "cells": args.cells,
        "min_area": args.min_area,
        "seed": args.seed,
        "segmentation": {
            "model": args.seg_model,
            "diameter": args.diameter,
            "flow_threshold": args.flow_threshold,
            "cellprob_threshold": args.cellprob_threshold,
            "min_size": args.min_size,
            "exclude_border": args.exclude_border,
            "gpu": args.gpu,
        },
    }
    todo = [p for p in paths if not (out / f"{p.stem}_summary.json").exists()]
    skipped = len(paths) - len(todo)
    log_lines = [f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {len(paths)} images, {skipped} already done"]
    t0 = time.perf_counter()
    rows = []
    if args.scheduler or args.workers > 1:
        try:
            from dask.distributed import Client, LocalCluster, as_completed
        except ImportError as exc:
            raise CytoDiffusionError(
                "dask.distributed is not installed: pip install 'napari-cytodiffusion[distributed]'"
            ) from exc
        cluster = None
        if not args.scheduler:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
            options["threads"] = max(1, (os.cpu_count() or 1) // args.workers)
        with Client(args.scheduler or cluster) as client:
            futures = [client.submit(analyze_one, str(p), str(out), options, pure=False) for p in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                rows.append(fut.result())
                print(f"[{i}/{len(todo)}] {rows[-1]['image']}: {rows[-1]['status']}", flush=True)
        if cluster is not None:
            cluster.close()
    else:
        for i, p in enumerate(todo, 1):
            rows.append(analyze_one(str(p), str(out), options))
            print(f"[{i}/{len(todo)}] {p.name}: {rows[-1]['status']}", flush=True)
    elapsed = time.perf_counter() - t0
    for r in rows:
        log_lines.append(f"{r['image']}: {r['status']} {r.get('error', '')} ({r['seconds']:.1f} s)")
        if r.get("trace"):
            log_lines.append(r.pop("trace"))
    cohort_path = out / "cohort.csv"
    old = pd.read_csv(cohort_path) if cohort_path.exists() else pd.DataFrame()
    # images finished by an interrupted run have outputs but no cohort row yet: rebuild it from the summary
    known = set(old["image"]) if len(old) else set()
    known |= {r["image"] for r in rows}
    recovered = [
        r for r in (_row_from_summary(p, out) for p in paths if p.name not in known) if r is not None
    ]
    if recovered:
        log_lines.append(f"{len(recovered)} cohort rows rebuilt from summaries of an interrupted run")
    new = pd.DataFrame(rows + recovered)
    cohort = pd.concat(
        [old[~old["image"].isin(new.get("image", []))] if len(old) else old, new], ignore_index=True
    )
    write_cells_csv(cohort, cohort_path)
    n_ok = sum(r["status"] == "ok" for r in rows)
    peaks: dict[int, float] = {}
    for r in rows:
        if r.get("peak_rss_mb") is not None:
            peaks[r["worker_pid"]] = max(peaks.get(r["worker_pid"], 0.0), r["peak_rss_mb"])
    if peaks:
        log_lines.append(
            "peak memory per worker: " + ", ".join(f"pid {k}: {v:.0f} MB" for k, v in sorted(peaks.items()))
        )
    log_lines.append(
        f"done: {n_ok} ok, {len(rows) - n_ok} failed, {elapsed:.1f} s "
        f"({60 * len(rows) / max(elapsed, 1e-9):.1f} images/min)"
    )
    prev = (out / "analyze.log").read_text() if (out / "analyze.log").exists() else ""
    write_text(out / "analyze.log", prev + "\n".join(log_lines) + "\n")
    print(log_lines[-1])
    return 0 if n_ok == len(rows) else 1
