"""Sub-command ``report``: one HTML page to review a results folder (differential, alerts, cell gallery)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="an HTML review page of a results folder: differential, alerts, flagged cells, cells by class",
    )
    p.add_argument("folder", help="results folder (from analyze, classify --labels, or the widget's export)")
    p.add_argument("--out", default=None, help="the page to write (default FOLDER/report.html)")
    p.add_argument("--max-per-class", type=int, default=200, help="cells shown per class, flagged ones first")
    p.add_argument("--max-review", type=int, default=60, help="flagged cells shown under 'Review first'")
    p.add_argument("--picture-px", type=int, default=96, help="side of each cell's picture in pixels")
    p.set_defaults(func=cmd_report)


def cmd_report(a) -> int:
    from ..report import write_report

    page = write_report(
        Path(a.folder),
        a.out,
        max_per_class=a.max_per_class,
        max_review=a.max_review,
        picture_px=a.picture_px,
    )
    print(f"report: {page}")
    return 0
