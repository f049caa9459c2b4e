"""A review report of a results folder: one self-contained HTML page.

The page holds what a haematologist reads off a slide: the pooled white-cell differential with
its counting error, the slide's alerts and domain check, the flagged cells to look at first, every
classified cell by class as a gallery (as cell-image analysers show them; each outlined as the
segmentation found it), and a table of the images with their verdicts. It is written by
``analyze`` at the end of a run, by ``napari-cytodiffusion report FOLDER`` for any results folder,
and from the *Analyze smears* widget.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

from .collect import ReportData, iter_collect

__all__ = ["REPORT_NAME", "ReportData", "iter_report", "write_report"]

#: the report's file name in a results folder
REPORT_NAME = "report.html"


def iter_report(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    max_per_class: int = 200,
    max_review: int = 60,
    picture_px: int = 96,
) -> Generator[tuple[int, int, str], None, Path]:
    """Write the report of ``folder``; yields ``(done, total, what)``, returns the page's path.

    Parameters
    ----------
    folder
        A results folder (``analyze``'s output folder, or any folder of ``NAME_summary.json``,
        ``NAME_cells.csv`` and ``NAME_labels.tif``).
    out
        The page (default ``folder/report.html``), written atomically.
    max_per_class
        Cells shown per class (flagged ones first); the rest are counted.
    max_review
        Flagged cells shown in *Review first*.
    picture_px
        Side of each cell's picture.

    Raises
    ------
    InputError
        When the folder holds no result, or a limit is not positive.
    """
    from ..errors import InputError
    from ..io.atomic import write_text
    from .html import render

    for name, v in (("max_per_class", max_per_class), ("max_review", max_review), ("picture_px", picture_px)):
        if v < 1:
            raise InputError(f"{name} must be at least 1, got {v}")
    data = yield from iter_collect(
        folder, max_per_class=max_per_class, max_review=max_review, picture_px=picture_px
    )
    target = Path(out) if out is not None else Path(folder) / REPORT_NAME
    write_text(target, render(data))
    return target


def write_report(folder: str | Path, out: str | Path | None = None, **kwargs) -> Path:
    """Run :func:`iter_report` to the end; returns the page's path."""
    gen = iter_report(folder, out, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
