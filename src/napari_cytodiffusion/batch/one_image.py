"""One image of a batch: segment + classify it and write its outputs (or only measure its red cells).

These run in this process or as dask tasks; each returns a cohort row and never raises for a bad
image (its error is in the row).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CytoDiffusionError
from ._generators import _run_to_end
from .cohort import _images, summary_fields


def _set_threads(options: dict[str, Any]) -> None:
    if options.get("threads"):
        import torch

        # one worker per core share: several processes each running 2+ OpenMP threads on 2 cores
        # were measured 2-7x slower per image than one process (spin-waiting threads)
        if torch.get_num_threads() != int(options["threads"]):  # once per worker process, not per task
            torch.set_num_threads(int(options["threads"]))


def analyze_one(path: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """Segment + classify one image and write its outputs; returns a cohort row.

    With a pooled scale (``options["pooled_scale"]``, from :func:`measure_one` over the run's
    images) the labels that :func:`measure_one` wrote are classified at that scale.
    """
    return _run_to_end(iter_analyze_one(path, out, options))


def iter_analyze_one(path: str, out: str, options: dict[str, Any]) -> Generator[Any, None, dict[str, Any]]:
    """:func:`analyze_one` as a generator: yields the pipeline's stages, returns the cohort row.

    Closing it between two stages (a cancelled run) writes nothing for this image.
    """
    from ..cli.commands_smear import write_smear_outputs
    from ..export import read_labels_tiff
    from ..io.images import read_image
    from ..model.registry import get_model
    from ..pipeline import Stage, iter_analyze
    from ..segmentation.cellpose_seg import SegmentParams

    p, o = Path(path), Path(out)
    t0 = time.perf_counter()
    _set_threads(options)
    row: dict[str, Any] = {"image": p.name, "path": str(p)}
    pooled = options.get("pooled_scale")
    own_scale = bool(pooled) and p.name in pooled.get("off_scale", ())  # taken at another scale
    try:
        image = read_image(p)
        # cached: loaded once per worker process
        model = get_model(options.get("model", "default"), device=options.get("device"))
        seg = SegmentParams(**options["segmentation"])
        res = None
        for item in iter_analyze(
            image,
            model=model,
            segment_params=seg,
            labels=read_labels_tiff(o / f"{p.stem}_labels.tif")[0] if pooled else None,
            speed=options.get("speed", "balanced"),
            cells=options.get("cells", "stained"),
            min_area=options.get("min_area", 0),
            seed=options.get("seed", 0),
            size_check=options.get("size_check", True),
            red_cell_px=pooled["pixels"] if pooled and not own_scale else options.get("red_cell_px"),
        ):
            if isinstance(item, Stage):
                yield item
            else:
                res = item
        if pooled:
            res.parameters["segmentation"] = seg.to_dict()  # the labels measure_one made
        if pooled and not own_scale:
            res.parameters["red_cell_px_from"] = "pooled"
            res.summary["reference_diameter"]["cells"] = (
                f"pooled: {pooled['cells']} whole red cells of {_images(pooled['images'])}"
            )
        write_smear_outputs(res, o, p.stem, model, input_path=p)
        s = res.summary
        row.update({"status": "ok", **summary_fields(s)})
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


def measure_one(path: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """First pass of a pooled-scale run: one image's labels and the diameters of its whole red cells.

    The labels TIFF is written to ``out`` (with its audit trail) for :func:`analyze_one`. A labels
    TIFF already there is reused when its audit says it was made from this very file (sha256)
    with the same segmentation parameters and software version, so an interrupted run does not
    segment again; any other is replaced.
    """
    from .. import __version__
    from ..export import audit_trail, file_sha256, read_labels_tiff, write_labels_tiff
    from ..io.images import read_image, to_rgb_float
    from ..pipeline import stained_score, whole_red_cells
    from ..segmentation.cellpose_seg import SegmentParams, segment
    from ..segmentation.table import cells_table

    p, o = Path(path), Path(out)
    t0 = time.perf_counter()
    _set_threads(options)
    row: dict[str, Any] = {"image": p.name, "path": str(p)}
    try:
        image = read_image(p)
        seg = SegmentParams(**options["segmentation"])
        f = o / f"{p.stem}_labels.tif"
        labels = None
        if f.is_file():
            try:
                old, audit = read_labels_tiff(f)
            except (OSError, ValueError):  # a truncated file from a killed run: segment again
                old, audit = np.zeros(0), {}
            same = (
                audit.get("input", {}).get("sha256") == file_sha256(p)
                and audit.get("parameters", {}).get("segmentation") == json.loads(json.dumps(seg.to_dict()))
                and audit.get("software", {}).get("napari-cytodiffusion") == __version__
                and old.shape == image.shape[:2]
            )
            labels = old if same else None
        if labels is None:
            labels = segment(image, seg)
            write_labels_tiff(labels, f, audit_trail(None, {"segmentation": seg.to_dict()}, input_path=p))
        rgb = to_rgb_float(image)
        table = cells_table(labels, rgb)
        score = stained_score(rgb, labels, table["label"].to_numpy())
        red = whole_red_cells(table, score)
        d = table["equivalent_diameter"].to_numpy(dtype=float)
        row.update({"status": "ok", "diameters": [round(float(v), 3) for v in d[red]]})
    except CytoDiffusionError as exc:
        row.update({"status": "error", "error": str(exc)})
    except Exception as exc:  # as in analyze_one: this image fails alone
        row.update(
            {"status": "error", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        )
    row["seconds"] = time.perf_counter() - t0
    return row


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (MB), where the platform reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _error_row(path: Path, message: str, seconds: float) -> dict[str, Any]:
    return {"image": path.name, "path": str(path), "status": "error", "error": message, "seconds": seconds}
