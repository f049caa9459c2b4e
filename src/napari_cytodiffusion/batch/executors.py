"""Where a batch's images run: in this process (stage by stage), or as tasks on a dask.distributed
cluster (a LocalCluster, or a scheduler's), with a time limit per image."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CytoDiffusionError
from ._generators import _mapped
from .one_image import _error_row, analyze_one, iter_analyze_one


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
