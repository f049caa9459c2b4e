"""Batch analysis of many smears, in this process or as dask.distributed tasks.

Per image: labels TIFF, cells CSV and summary JSON (with audit trail). For the cohort: one
CSV row per image and a log, both updated as each image finishes. Finished images (summary
present) are skipped on re-runs; a bad file fails alone with its error in the log; on dask
workers, an image that runs past the time limit fails alone too (its stack is logged and its
worker restarted).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CytoDiffusionError


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


def _run_to_end(gen: Generator) -> Any:
    """Run a generator to its end and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _mapped(gen: Generator, fn: Callable[[Any], Any]) -> Generator:
    """``gen`` with ``fn`` applied to what it yields; returns what it returns."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(item)


def iter_analyze_one(path: str, out: str, options: dict[str, Any]) -> Generator[Any, None, dict[str, Any]]:
    """:func:`analyze_one` as a generator: yields the pipeline's stages, returns the cohort row.

    Closing it between two stages (a cancelled run) writes nothing for this image.
    """
    from .cli.commands_smear import write_smear_outputs
    from .export import read_labels_tiff
    from .io.images import read_image
    from .model.registry import get_model
    from .pipeline import Stage, iter_analyze
    from .segmentation.cellpose_seg import SegmentParams

    p, o = Path(path), Path(out)
    t0 = time.perf_counter()
    _set_threads(options)
    row: dict[str, Any] = {"image": p.name, "path": str(p)}
    pooled = options.get("pooled_scale")
    own_scale = bool(pooled) and p.name in pooled.get("off_scale", ())  # taken at another scale
    try:
        image = read_image(p)
        model = get_model(options.get("model", "default"))  # cached: loaded once per worker process
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
        row.update({"status": "ok", **_summary_fields(s)})
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
    from . import __version__
    from .export import audit_trail, file_sha256, read_labels_tiff, write_labels_tiff
    from .io.images import read_image, to_rgb_float
    from .pipeline import stained_score, whole_red_cells
    from .segmentation.cellpose_seg import SegmentParams, segment
    from .segmentation.table import cells_table

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


def _row_from_summary(path: Path, out: Path) -> dict[str, Any] | None:
    """A cohort row from an image's summary JSON (for outputs written by an interrupted run)."""
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
        **_summary_fields(s),
        "seconds": s.get("seconds", {}).get("total"),
    }


def _summary_fields(s: dict[str, Any]) -> dict[str, Any]:
    """The cohort columns taken from one image's summary."""
    domain = s.get("domain_check") or {}
    scale = s.get("reference_diameter") or {}
    return {
        "n_cells": s.get("n_cells"),
        # one camera gives one red-cell size: an image far from the others' needs a look at its segmentation
        "red_cell_px": scale.get("pixels"),
        "red_cell_from": scale.get("cells"),
        "whole_red_cells": scale.get("whole_red_cells"),
        "n_classified": s.get("n_classified"),
        "n_white_cells": (s.get("differential") or {}).get("leukocytes"),
        **{f"n_{c}": k for c, k in s.get("counts", {}).items()},
        # the calls the triage's alerts counted (unflagged ones by default), to pool them over the cohort
        **{f"alert_n_{c}": k for c, k in s.get("alert_counts", {}).items()},
        "percent_flagged": s.get("percent_flagged"),
        "n_anomalous": domain.get("n_anomalous"),
        "n_scored": domain.get("n"),
        "expected_anomalous_fraction": domain.get("expected_fraction"),
        "unlike_training_cells": domain.get("shifted"),
        "verdict": s.get("verdict"),
    }


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (MB), where the platform reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


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

    Raises
    ------
    InputError
        For an unknown preset or cell choice, a bad scale, or both ``red_cell_px`` and ``pool_scale``.
    """
    from .classify.classifier import PRESETS
    from .errors import InputError
    from .pipeline import check_red_cell_px
    from .segmentation.cellpose_seg import SegmentParams

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
    }


class _Cohort:
    """The cohort table (one row per image), rewritten atomically after every finished image.

    An interrupted run therefore leaves a table that is at most one image behind; rows of images
    whose outputs exist but that have no row (killed between the two writes) are rebuilt from
    their summaries when the next run starts.
    """

    def __init__(self, path: Path, paths: list[Path], out: Path) -> None:
        import pandas as pd

        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                old = pd.read_csv(path)
            except (OSError, ValueError, pd.errors.ParserError):
                old = pd.DataFrame()  # unreadable table: rebuilt from the summaries below
            for r in old.to_dict("records"):
                self.rows[str(r["image"])] = {k: v for k, v in r.items() if not _isnan(v)}
        self.recovered = 0
        for p in paths:
            if p.name not in self.rows or self.rows[p.name].get("status") != "ok":
                r = _row_from_summary(p, out)
                if r is not None:
                    self.rows[p.name] = r
                    self.recovered += 1

    def add(self, row: dict[str, Any]) -> None:
        import pandas as pd

        from .export import write_cells_csv

        self.rows[row["image"]] = {k: v for k, v in row.items() if k != "trace"}
        write_cells_csv(pd.DataFrame(list(self.rows.values())), self.path)


def pooled_domain_check(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The domain check over every classified cell of the cohort's finished images.

    One field holds a few classified cells, too few for the per-image check; a slide's fields
    (or a cohort from one scanner) pooled are enough. ``None`` when no row has the counts.
    """
    from .classify.anomaly import shift_test

    keys = ("n_scored", "n_anomalous", "expected_anomalous_fraction")
    ok = [
        r
        for r in rows
        if r.get("status") == "ok" and all(r.get(k) is not None and not _isnan(r[k]) for k in keys)
    ]
    if not ok:
        return None
    pooled = shift_test(
        sum(int(r["n_anomalous"]) for r in ok),
        sum(int(r["n_scored"]) for r in ok),
        float(np.median([float(r["expected_anomalous_fraction"]) for r in ok])),
    )
    return {"images": len(ok), **pooled}


def cohort_differential(rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """The white-cell differential over every finished image (a slide's fields pooled).

    One field holds a few white cells; a differential needs 100 or more. The counts of the
    cohort rows (``n_<class>``) are summed; ``images`` says over how many. None without rows or
    white-cell classes.
    """
    from .model.registry import get_model

    md = get_model(model).metadata
    return pooled_differential(rows, md.classes, md.extra)


def pooled_differential(
    rows: list[dict[str, Any]], classes: list[str], extra: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """:func:`cohort_differential` for a model's ``classes`` (and metadata ``extra``)."""
    from .differential import differential
    from .pipeline import DEFAULT_TRIAGE, alert_reasons

    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return None
    counts = {
        c: int(sum(float(r[f"n_{c}"]) for r in ok if not _isnan(r.get(f"n_{c}", float("nan")))))
        for c in classes
    }
    d = differential(counts, classes, extra)
    if d is None:
        return None
    alerted = {
        c: int(sum(float(r[f"alert_n_{c}"]) for r in ok if not _isnan(r.get(f"alert_n_{c}", float("nan")))))
        for c in DEFAULT_TRIAGE["alert_classes"]
        if c in classes and any(f"alert_n_{c}" in r for r in ok)
    }
    n_classified = int(sum(float(r.get("n_classified") or 0) for r in ok))
    return {
        "images": len(ok),
        "counts": counts,
        **d,
        "alert_counts": alerted,
        # the slide's alerts: one field's 1-3 white cells make any IG call "over 2 %"; pooled they do not
        "alerts": alert_reasons(alerted, d, n_classified, DEFAULT_TRIAGE),
    }


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


class _Log:
    """analyze.log, appended line by line as images finish (a stopped run keeps its log)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError as exc:
            raise CytoDiffusionError(f"cannot write the log {self.path}: {exc.strerror or exc}") from exc


def _error_row(path: Path, message: str, seconds: float) -> dict[str, Any]:
    return {"image": path.name, "path": str(path), "status": "error", "error": message, "seconds": seconds}


def _run_on_dask(
    client, fn, todo: list[Path], out: Path, options: dict, timeout: float | None, done, log
) -> Iterator[str]:
    """Run ``fn`` (:func:`analyze_one`, :func:`measure_one`) for every image on the cluster of ``client``.

    At most one task per worker thread is in flight, so the time since submission is the time
    a task has been running (plus the model load of a fresh worker). A task that runs past
    ``timeout`` seconds is recorded as failed, the call stack of the stuck task goes to the log,
    and its worker is restarted so the rest of the cohort goes on. Yields a status line every
    ~2 s; closing the generator (a cancelled run) cancels the tasks in flight.
    """
    from dask.distributed import wait

    slots = max(1, sum(client.nthreads().values()))
    queue = iter(todo)
    running: dict[Any, tuple[Path, float]] = {}

    def submit_next() -> None:
        p = next(queue, None)
        if p is not None:
            fut = client.submit(fn, str(p), str(out), options, pure=False)
            running[fut] = (p, time.perf_counter())

    try:
        for _ in range(slots):
            submit_next()
        while running:
            try:
                finished, _ = wait(list(running), timeout=2.0, return_when="FIRST_COMPLETED")
            except TimeoutError:  # dask's wait raises when nothing finished within the timeout
                finished = set()
            for fut in finished:
                p, t = running.pop(fut)
                try:
                    row = fut.result()
                except Exception as exc:  # the worker died (e.g. killed for memory): this image fails alone
                    row = _error_row(
                        p, f"worker failed: {type(exc).__name__}: {exc}", time.perf_counter() - t
                    )
                done(row)
                submit_next()
            for _ in range(_stop_overdue(client, running, timeout, done, log) if timeout else 0):
                submit_next()
            yield ", ".join(p.name for p, _ in running.values()) or "finishing"
    finally:
        for fut in running:
            fut.cancel()


def _stop_overdue(client, running: dict, timeout: float, done, log) -> int:
    """Record the tasks running past ``timeout`` as failed, log their stacks, restart their workers.

    Returns how many were stopped.
    """
    now = time.perf_counter()
    stopped = 0
    for fut, (p, t) in list(running.items()):
        if now - t <= timeout:
            continue
        workers = [w for w, keys in client.processing().items() if fut.key in keys]
        try:
            stacks = client.call_stack(keys=[fut.key])
        except Exception as exc:  # diagnostics only; the restart below matters
            stacks = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"{p.name}: still running after {timeout:.0f} s on {workers or 'an unknown worker'}; stack:")
        for w, per_key in (stacks or {}).items():
            log(f"  worker {w}: {per_key}")
        running.pop(fut)
        fut.cancel()
        if workers:
            client.restart_workers(workers, raise_for_error=False)
        done(_error_row(p, f"timed out after {timeout:.0f} s (worker restarted)", now - t))
        stopped += 1
    return stopped


def _run_here(fn, todo: list[Path], out: Path, options: dict, done) -> Iterator[str]:
    """Run ``fn`` for every image in this process, yielding what it is doing (stage by stage)."""

    for p in todo:
        yield p.name
        if fn is analyze_one:
            row = yield from _mapped(
                iter_analyze_one(str(p), str(out), options),
                lambda st, name=p.name: f"{name}: {st.stage} {st.done}/{st.total}",
            )
        else:
            row = fn(str(p), str(out), options)
        done(row)


@contextmanager
def _executor(
    workers: int, scheduler: str | None, options: dict[str, Any], out: Path, timeout: float | None, log
) -> Iterator[Callable[..., Iterator[str]]]:
    """``run(fn, paths, options, done)``: in this process, or on dask workers (one cluster for every pass)."""
    if not (scheduler or workers > 1):
        yield lambda fn, paths, opts, done: _run_here(fn, paths, out, opts, done)
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise CytoDiffusionError(
            "dask.distributed is not installed: pip install 'napari-cytodiffusion[distributed]'"
        ) from exc
    cluster = None
    if not scheduler:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
        options["threads"] = max(1, (os.cpu_count() or 1) // workers)
    try:
        with Client(scheduler or cluster) as client:
            yield lambda fn, paths, opts, done: _run_on_dask(client, fn, paths, out, opts, timeout, done, log)
    finally:
        if cluster is not None:
            cluster.close()


def _measure_scale(
    run, paths: list[Path], todo: list[Path], out: Path, options, done, log, say
) -> Generator[str, None, list[Path]]:
    """First pass of a pooled scale: segment every image, pool their whole red cells into one scale.

    Every image of the run is measured, finished ones too (their labels are reused), so that a
    resumed run pools the same cells. Sets ``options["pooled_scale"]`` and writes
    ``cohort_scale.json``; returns the images still to classify (those whose measuring failed are
    recorded as failed). Too few red cells in all: each image keeps its own estimate.
    """
    from .io.atomic import write_json
    from .pipeline import OFF_SCALE_TOLERANCE, pooled_reference

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
    from .io.images import check_distinct_stems

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
        say(f"[{len(rows)}/{n_todo}] {row['image']}: {row['status']}")

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
        from .classify.anomaly import shift_warning
        from .io.atomic import write_json

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
        from .differential import differential_line
        from .io.atomic import write_json

        write_json(out / "cohort_differential.json", diff)
        if diff["leukocytes"]:
            from .evaluate.plots import differential_png

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
        from .report import iter_report

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


def scale_hint(rows: list[dict[str, Any]]) -> str | None:
    """A hint to pool the scale when the images hold too few whole red cells for a steady one each.

    The typical image (median) must hold fewer than :data:`~napari_cytodiffusion.pipeline.OWN_SCALE_CELLS`
    whole red cells: cell-centred images, not smears. Images given a scale do not count.
    """
    from .pipeline import OWN_SCALE_CELLS

    counts = [
        float(r["whole_red_cells"])
        for r in rows
        if r.get("status") == "ok"
        and r.get("red_cell_from") != "given"
        and isinstance(r.get("whole_red_cells"), int | float)
        and not _isnan(r["whole_red_cells"])
    ]
    if len(counts) < 2 or np.median(counts) >= OWN_SCALE_CELLS:
        return None
    return (
        f"note: the images hold {np.median(counts):.0f} whole red cells each (median), too few for a "
        "steady scale each; if they come from one camera, --pool-scale measures it once over all of them"
    )
