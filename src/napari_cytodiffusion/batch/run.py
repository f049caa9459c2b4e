"""A batch run over many smears: its options, the pooled-scale pass, and the run itself."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from ._generators import _mapped, _run_to_end
from .cohort import _Cohort, _images, _Log, cohort_differential, pooled_domain_check, scale_hint
from .executors import _executor
from .one_image import analyze_one, measure_one


def analysis_options(
    model: str | os.PathLike = "default",
    speed: str = "balanced",
    cells: str = "stained",
    min_area: int = 0,
    seed: int = 0,
    size_check: bool = True,
    red_cell_px: float | None = None,
    pool_scale: bool = False,
    segmentation: Any = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The options of a batch run (plain data, so that dask can send them to its workers).

    Parameters
    ----------
    model
        Diffusion model: a name (``default``) or a folder.
    speed, cells, min_area, seed, size_check, red_cell_px
        As for :func:`~napari_cytodiffusion.pipeline.iter_analyze`.
    pool_scale
        Measure one red-cell size over the whole red cells of every image (one camera and
        magnification) instead of each image's own; every image is segmented first.
    segmentation
        :class:`~napari_cytodiffusion.segmentation.cellpose_seg.SegmentParams` (defaults if None).
    device
        Torch device of the classifier, resolved by each worker (``None``: the CPU; ``"auto"``:
        a CUDA GPU when the worker has one).

    Raises
    ------
    InputError
        For an unknown preset or cell choice, a bad scale, or both ``red_cell_px`` and ``pool_scale``.
    """
    from ..classify.classifier import PRESETS
    from ..errors import InputError
    from ..pipeline import check_red_cell_px
    from ..segmentation.cellpose_seg import SegmentParams

    if speed not in PRESETS:
        raise InputError(f"unknown speed {speed!r}; choose one of {', '.join(PRESETS)}")
    if cells not in ("stained", "all"):
        raise InputError(f"cells must be 'stained' or 'all', got {cells!r}")
    check_red_cell_px(red_cell_px)
    if pool_scale and red_cell_px is not None:
        raise InputError("give either a red cell's size in pixels or pool the scale, not both")
    return {
        "model": str(model),
        "speed": speed,
        "cells": cells,
        "min_area": int(min_area),
        "seed": int(seed),
        "size_check": bool(size_check),
        "red_cell_px": None if red_cell_px is None else float(red_cell_px),
        "pool_scale": bool(pool_scale),
        "segmentation": (segmentation or SegmentParams()).to_dict(),
        "device": device,
    }


def _measure_scale(
    run, paths: list[Path], todo: list[Path], out: Path, options, done, log, say
) -> Generator[str, None, list[Path]]:
    """First pass of a pooled scale: segment every image, pool their whole red cells into one scale.

    Every image of the run is measured, finished ones too (their labels are reused), so that a
    resumed run pools the same cells. Sets ``options["pooled_scale"]`` and writes
    ``cohort_scale.json``; returns the images still to classify (those whose measuring failed are
    recorded as failed). Too few red cells in all: each image keeps its own estimate.
    """
    from ..io.atomic import write_json
    from ..pipeline import OFF_SCALE_TOLERANCE, pooled_reference

    diameters: dict[str, list[float]] = {}
    failed: set[str] = set()
    waiting = {p.name for p in todo}

    def measured(row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            diameters[row["image"]] = row["diameters"]
            say(f"[scale {len(diameters) + len(failed)}/{len(paths)}] {row['image']}")
            return
        failed.add(row["image"])
        if row["image"] in waiting:
            done(row)
        else:  # finished before; its outputs stand
            log(f"{row['image']}: measuring its red cells failed: {row['error']}")

    for what in run(measure_one, paths, options, measured):
        yield f"measuring the scale: {what}"
    pooled = pooled_reference(diameters)
    if pooled is None:
        line = (
            f"too few whole red cells over {_images(len(diameters))} to pool a scale: "
            "each image is measured on its own"
        )
    else:
        write_json(out / "cohort_scale.json", pooled)
        options["pooled_scale"] = {k: pooled[k] for k in ("pixels", "cells", "images", "off_scale")}
        line = (
            f"scale pooled over {pooled['cells']} whole red cells of {_images(pooled['images'])}: "
            f"a red cell is {pooled['pixels']:.1f} px across"
        )
        if pooled["off_scale"]:
            line += (
                f"; warning: the red cells of {_images(len(pooled['off_scale']))} are more than "
                f"{OFF_SCALE_TOLERANCE:.0%} off that size (another camera or magnification?), so they "
                "are left out of the pool and keep their own scale: "
                + ", ".join(pooled["off_scale"][:5])
                + (" …" if len(pooled["off_scale"]) > 5 else "")
            )
    log(line)
    say(line)
    return [p for p in todo if p.name not in failed]


def iter_analysis(
    paths: list[Path],
    out: Path,
    options: dict[str, Any],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    timeout: float | None = None,
    say: Callable[[str], None] | None = None,
    report: bool = True,
) -> Generator[tuple[int, int, str], None, dict[str, Any]]:
    """Analyse many smears into ``out``: per image labels, cells and summary; a cohort table and log.

    Parameters
    ----------
    paths
        Image files. Those with a summary in ``out`` already are skipped (a resumed run).
    out
        Output folder (must exist).
    options
        From :func:`analysis_options`.
    workers, scheduler
        In this process (1 worker, no scheduler), on a LocalCluster of ``workers`` processes, or
        on the dask.distributed cluster at ``scheduler``.
    timeout
        Seconds one image may run on a dask worker before it is marked failed (None: no limit).
    say
        Called with each line worth showing a user (an image finished, the scale, the cohort check).
    report
        Write ``report.html`` at the end (:mod:`~napari_cytodiffusion.report`): the pooled
        differential, alerts, flagged cells and every classified cell by class, for review.

    Yields
    ------
    (done, total, what)
        Images finished in this run, images to do, and what is being done now. Closing the
        generator (a cancelled run) stops at the next stage; finished images keep their outputs
        and rows, and a re-run goes on from there.

    Raises
    ------
    InputError
        Before any work, when two images would write outputs of the same name.

    Returns
    -------
    dict
        ``images``, ``skipped`` (finished before), ``ok``, ``failed``, ``seconds``, ``rows`` (this
        run's cohort rows), ``domain_check`` (over every finished image of ``out``, or None),
        ``differential`` (the white-cell differential of those images pooled, or None), ``scale``
        (the pooled scale, or None), ``hint`` (a note to pool the scale, or None) and ``report``
        (the review page's path, or None).
    """
    from ..io.images import check_distinct_stems

    check_distinct_stems(paths)
    say = say or (lambda line: None)
    options = dict(options)
    todo = [p for p in paths if not (out / f"{p.stem}_summary.json").exists()]
    log = _Log(out / "analyze.log")
    log(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {len(paths)} images, {len(paths) - len(todo)} already done")
    cohort = _Cohort(out / "cohort.csv", paths, out)
    if cohort.recovered:
        log(f"{cohort.recovered} cohort rows rebuilt from summaries of an interrupted run")
    rows: list[dict[str, Any]] = []
    n_todo = len(todo)  # an image failing in the first pass of a pooled scale counts as done

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        cohort.add(row)
        log(f"{row['image']}: {row['status']} {row.get('error', '')} ({row['seconds']:.1f} s)")
        if row.get("trace"):
            log(row["trace"])
        line = f"[{len(rows)}/{n_todo}] {row['image']}: {row['status']}"
        if row.get("error"):
            line += ": " + str(row["error"]).removeprefix(f"{row['image']}: ")
        say(line)

    t0 = time.perf_counter()
    yield 0, n_todo, "starting"
    with _executor(workers, scheduler, options, out, timeout, log) as run:
        if options.get("pool_scale") and todo:
            todo = yield from _mapped(
                _measure_scale(run, paths, todo, out, options, done, log, say),
                lambda what: (len(rows), n_todo, what),
            )
        for what in run(analyze_one, todo, options, done):
            yield len(rows), n_todo, what
    elapsed = time.perf_counter() - t0
    n_ok = sum(r["status"] == "ok" for r in rows)
    peaks: dict[int, float] = {}
    for r in rows:
        if r.get("peak_rss_mb") is not None:
            peaks[r["worker_pid"]] = max(peaks.get(r["worker_pid"], 0.0), r["peak_rss_mb"])
    if peaks:
        log("peak memory per worker: " + ", ".join(f"pid {k}: {v:.0f} MB" for k, v in sorted(peaks.items())))
    last = (
        f"done: {n_ok} ok, {len(rows) - n_ok} failed, {elapsed:.1f} s "
        f"({60 * len(rows) / max(elapsed, 1e-9):.1f} images/min)"
    )
    log(last)
    say(last)
    pooled = pooled_domain_check(list(cohort.rows.values()))
    if pooled is not None:
        from ..classify.anomaly import shift_warning
        from ..io.atomic import write_json

        write_json(out / "cohort_domain_check.json", pooled)
        if pooled["shifted"]:
            line = f"warning: over {_images(pooled['images'])}, {shift_warning(pooled)}"
        else:
            line = (
                f"domain check over {_images(pooled['images'])}: {pooled['n_anomalous']} of {pooled['n']} "
                f"classified cells anomalous ({pooled['expected_fraction']:.0%} expected, p = "
                f"{pooled['p_value']:.2g}): like the model's training cells"
            )
        log(line)
        say(line)
    diff = cohort_differential(list(cohort.rows.values()), options["model"])
    if diff is not None:
        from ..differential import differential_line
        from ..io.atomic import write_json

        write_json(out / "cohort_differential.json", diff)
        if diff["leukocytes"]:
            from ..evaluate.plots import differential_png

            differential_png(
                diff, out / "cohort_differential.png", f"White-cell differential, {_images(diff['images'])}"
            )
        line = differential_line(diff)
        if line:
            line = f"over {_images(diff['images'])}, {line}"
            log(line)
            say(line)
        for alert in diff["alerts"]:
            line = f"warning: over {_images(diff['images'])}, {alert}"
            log(line)
            say(line)
    hint = scale_hint(list(cohort.rows.values()))
    if hint and not options.get("pool_scale"):
        log(hint)
        say(hint)
    else:
        hint = None
    page = None
    if report and any(r.get("status") == "ok" for r in cohort.rows.values()):
        from ..report import iter_report

        page = yield from _mapped(iter_report(out), lambda w: (len(rows), n_todo, f"report: {w[2]}"))
        log(f"report: {page}")
        say(f"report: {page}")
    return {
        "images": len(paths),
        "skipped": len(paths) - n_todo,
        "ok": n_ok,
        "failed": len(rows) - n_ok,
        "seconds": elapsed,
        "rows": [{k: v for k, v in r.items() if k not in ("trace", "diameters")} for r in rows],
        "domain_check": pooled,
        "differential": diff,
        "scale": options.get("pooled_scale"),
        "hint": hint,
        "report": str(page) if page else None,
    }


def run_analysis(
    paths: list[Path],
    out: Path,
    options: dict[str, Any],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    timeout: float | None = None,
    say: Callable[[str], None] | None = print,
    report: bool = True,
) -> dict[str, Any]:
    """Run :func:`iter_analysis` to the end (the ``analyze`` command); returns its report."""

    def echo(line: str) -> None:
        if say is not None:
            say(line)
            sys.stdout.flush()

    return _run_to_end(
        iter_analysis(
            paths,
            out,
            options,
            workers=workers,
            scheduler=scheduler,
            timeout=timeout,
            say=echo,
            report=report,
        )
    )
