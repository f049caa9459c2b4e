"""Many slides in one run: each folder of images is one slide (or patient), analysed on its own.

A differential, its alerts and the domain check belong to one slide: fields of different
patients pooled would mix them. With slides, each folder's images go to ``OUT/<slide>/`` (its
cohort table, differential, alerts, domain check and review page, as a run of :func:`iter_analysis`
on that folder alone writes them), and ``OUT/slides.csv`` holds one row per slide, rewritten as
each slide finishes, so a stopped run resumes slide by slide and image by image.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._generators import _mapped, _run_to_end
from .cohort import _images
from .run import iter_analysis

#: the table of slides in the output folder
SLIDES_TABLE = "slides.csv"


def slide_groups(paths: list[Path]) -> dict[str, list[Path]]:
    """The images grouped by their folder, each group named for its slide, in the order first seen.

    A slide's name is its folder's path below the folders' common parent (``patient7/slide2``),
    or the folder's own name when the images sit in one folder or in the common parent itself.

    Raises
    ------
    InputError
        When two images of one slide would write outputs of the same name, or two folders get the
        same name.
    """
    from ..io.images import check_distinct_stems

    folders: dict[Path, list[Path]] = {}
    for p in paths:
        # the folder as given, links not followed: a slide may be a folder of links to its fields
        folders.setdefault(Path(os.path.abspath(p)).parent, []).append(Path(p))
    common = Path(os.path.commonpath(list(folders))) if len(folders) > 1 else None
    groups: dict[str, list[Path]] = {}
    for folder, members in folders.items():
        name = (
            folder.relative_to(common).as_posix() if common is not None and folder != common else folder.name
        )
        name = name or "slide"  # the file system's root
        if name in groups:
            raise InputError(f"two folders would both be slide {name!r}: give each slide its own folder")
        check_distinct_stems(members)
        groups[name] = members
    return groups


def iter_slides(
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
    """:func:`~napari_cytodiffusion.batch.iter_analysis` for each slide (folder) into ``out/<slide>``.

    Yields ``(done, total, what)`` over all the images; returns ``images``, ``ok``, ``failed``
    (this run), ``seconds`` and ``slides`` (the rows of ``slides.csv``). Bad input (name clashes)
    is refused before any work.
    """
    import pandas as pd

    from ..io.atomic import write_with

    groups = slide_groups(paths)
    say = say or (lambda line: None)
    total, base, ok, failed = len(paths), 0, 0, 0
    rows: dict[str, dict[str, Any]] = _read_slides(out / SLIDES_TABLE)
    t0 = time.perf_counter()
    for i, (name, members) in enumerate(groups.items(), 1):
        sub = out / name
        sub.mkdir(parents=True, exist_ok=True)
        say(f"slide {i}/{len(groups)}: {name} ({_images(len(members))})")
        if name not in rows:  # listed before its run: its page, written at the run's end, links the overview
            rows[name] = {"slide": name}
            write_with(
                out / SLIDES_TABLE, lambda tmp: pd.DataFrame(list(rows.values())).to_csv(tmp, index=False)
            )

        def progress(w, name=name, members=members, base=base):
            done, todo, what = w
            return base + (len(members) - todo) + done, total, f"slide {name}: {what}"

        rep = yield from _mapped(
            iter_analysis(
                members,
                sub,
                options,
                workers=workers,
                scheduler=scheduler,
                timeout=timeout,
                say=lambda line, name=name: say(f"{name}: {line}"),
                report=report,
            ),
            progress,
        )
        base += len(members)
        ok, failed = ok + rep["ok"], failed + rep["failed"]
        rows[name] = slide_row(name, sub, rep)
        write_with(out / SLIDES_TABLE, lambda tmp: pd.DataFrame(list(rows.values())).to_csv(tmp, index=False))
    page = None
    if report and rows:
        from ..report import write_slides_page

        page = write_slides_page(out)
        say(f"slides: {page}")
    for r in rows.values():
        if r["alerts"] or str(r["unlike_training_cells"]) == "True":
            say(f"slide {r['slide']}: " + "; ".join(x for x in (r["alerts"], r["domain"]) if x))
    return {
        "images": total,
        "ok": ok,
        "failed": failed,
        "seconds": time.perf_counter() - t0,
        "slides": list(rows.values()),
        "report": str(page) if page else None,
    }


def run_slides(
    paths: list[Path],
    out: Path,
    options: dict[str, Any],
    *,
    say: Callable[[str], None] | None = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run :func:`iter_slides` to the end (``analyze --by-folder``); returns its report."""

    def echo(line: str) -> None:
        if say is not None:
            say(line)
            sys.stdout.flush()

    return _run_to_end(iter_slides(paths, out, options, say=echo, **kwargs))


def slide_row(name: str, folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """One slide's row of ``slides.csv``, from its folder's cohort and its run's report."""
    import pandas as pd

    cohort = pd.read_csv(folder / "cohort.csv") if (folder / "cohort.csv").is_file() else pd.DataFrame()
    status = cohort["status"].value_counts().to_dict() if "status" in cohort else {}
    verdicts = cohort["verdict"].value_counts().to_dict() if "verdict" in cohort else {}
    diff = report.get("differential") or {}
    check = report.get("domain_check") or {}
    row: dict[str, Any] = {
        "slide": name,
        "images": int(len(cohort)),
        "ok": int(status.get("ok", 0)),
        "failed": int(len(cohort) - status.get("ok", 0)),
        "fields_needing_review": int(verdicts.get("needs review", 0)),
        "white_cells": diff.get("leukocytes"),
    }
    for c, p in (diff.get("percent") or {}).items():
        row[f"pct_{c}"] = p
    for c, v in (diff.get("per_100_leukocytes") or {}).items():
        row[f"{c}_per_100_white_cells"] = v.get("value")
    row["alerts"] = "; ".join(diff.get("alerts") or [])
    row["unlike_training_cells"] = bool(check.get("shifted", False))
    row["domain"] = (
        f"{check['n_anomalous']} of {check['n']} cells unlike the training cells "
        f"({check['expected_fraction']:.0%} expected)"
        if check
        else ""
    )
    row["report"] = f"{name}/report.html" if report.get("report") else ""
    return row


def _read_slides(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run's ``slides.csv`` (kept for slides this run does not touch)."""
    import pandas as pd

    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    table = table.astype(object).where(table.notna(), "")
    if "slide" not in table:
        raise InputError(f"{path} is not a slides table (no 'slide' column): choose another output folder")
    return {str(r["slide"]): r for r in table.to_dict("records")}
