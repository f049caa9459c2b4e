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

from ..batch.slides import SLIDES_TABLE
from .collect import ReportData, iter_collect, result_summaries

__all__ = ["REPORT_NAME", "ReportData", "iter_report", "write_report", "write_slides_page"]

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
        ``NAME_cells.csv`` and ``NAME_labels.tif``). The output folder of ``analyze --by-folder``
        (``slides.csv``) gets each slide's page written again and the overview of the slides.
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
    folder = Path(folder)
    if (folder / SLIDES_TABLE).is_file() and not result_summaries(folder):  # analyze --by-folder
        import pandas as pd

        try:
            slides = [str(s) for s in pd.read_csv(folder / SLIDES_TABLE)["slide"]]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read {folder / SLIDES_TABLE}: {exc}") from exc
        for i, slide in enumerate(slides):
            yield i, len(slides), f"slide {slide}"
            try:
                yield from iter_report(
                    folder / slide, max_per_class=max_per_class, max_review=max_review, picture_px=picture_px
                )
            except InputError:  # a slide without results (every image failed): its row says so
                continue
        return write_slides_page(folder, out)
    data = yield from iter_collect(
        folder, max_per_class=max_per_class, max_review=max_review, picture_px=picture_px
    )
    target = Path(out) if out is not None else Path(folder) / REPORT_NAME
    write_text(target, render(data))
    return target


def write_slides_page(folder: str | Path, out: str | Path | None = None) -> Path:
    """``folder/report.html`` (or ``out``) for a run with one slide per folder: its ``slides.csv`` as a page."""
    import pandas as pd

    from ..errors import InputError
    from ..io.atomic import write_text
    from .slides_page import render_slides

    folder = Path(folder)
    try:
        table = pd.read_csv(folder / SLIDES_TABLE)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {folder / SLIDES_TABLE}: {exc}") from exc
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    return write_text(Path(out) if out is not None else folder / REPORT_NAME, render_slides(folder, rows))


def write_report(folder: str | Path, out: str | Path | None = None, **kwargs) -> Path:
    """Run :func:`iter_report` to the end; returns the page's path."""
    gen = iter_report(folder, out, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
