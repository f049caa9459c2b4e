"""Gather what a report shows from a folder of smear results: images, pooled counts, cell pictures.

Reads what ``analyze``, ``classify --labels``, ``demo`` and the *Classify cells* export write
(``NAME_summary.json``, ``NAME_cells.csv``, ``NAME_labels.tif``; ``cohort.csv`` for the images that
failed), in two passes: the tables first (small) to choose the cells shown, then one image and its
labels at a time to cut their pictures, so a folder of large smears never sits in memory at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .thumbnails import hex_rgb

#: cells are cut out at least this many red-cell diameters wide (one magnification for a smear)
RED_CELLS_PER_PICTURE = 3.0


@dataclass
class ReportCell:
    """One classified cell as a gallery shows it."""

    image: str  #: the image's name
    label: int
    cls: str  #: the user's correction where there is one, the model's call otherwise
    predicted: str  #: the model's call
    p_correct: float
    anomaly: float
    flagged: bool
    reason: str  #: why it is flagged, in words ("" when not, or unknown for older results)
    runner_up: str  #: the next most likely class and its probability ("lymphocyte 0.12")
    picture: str = ""  #: data URI, filled in the second pass ("" when its image is not found)

    @property
    def corrected(self) -> bool:
        return self.cls != self.predicted


@dataclass
class ReportImage:
    """One row of the report's image table."""

    name: str
    status: str  #: "ok" or "failed"
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""  #: why it failed, or why its cells have no pictures
    stem: str = ""


@dataclass
class ReportData:
    """Everything the page shows."""

    folder: Path
    created: str
    model: dict[str, Any]  #: name, content_hash, and a warning when results used other models
    parameters: dict[str, Any]
    classes: list[str]
    colours: dict[str, str]
    images: list[ReportImage]
    differential: dict[str, Any] | None
    domain_check: dict[str, Any] | None
    by_class: dict[str, list[ReportCell]]  #: cells shown per class, in gallery order
    totals: dict[str, int]  #: classified cells per class (also those not shown)
    flagged_totals: dict[str, int]
    review: list[ReportCell]  #: flagged cells, most useful to look at first
    n_review: int  #: flagged cells not yet corrected, in all
    kind: str = "smears"  #: "smears" (cells cut from smears) or "cells" (single-cell images)


def result_summaries(folder: Path) -> list[Path]:
    """The smear summaries of a results folder (``NAME_summary.json``; ``summary.json`` of ``demo``)."""
    found = sorted(folder.glob("*_summary.json"))
    if (folder / "summary.json").is_file():
        found.insert(0, folder / "summary.json")
    return found


def _read_table(summary_path: Path):
    """Summary (with audit) and cells table of one result, read light (no labels, no image)."""
    import pandas as pd

    from ..io.results import clean_cells_table, output_files

    stem, files = output_files(summary_path)
    try:
        summary = json.loads(files["summary"].read_text(encoding="utf-8"))
        table = pd.read_csv(files["cells"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {files['summary'].name} or {files['cells'].name}: {exc}") from exc
    if not isinstance(summary, dict) or "n_cells" not in summary or "label" not in table:
        raise InputError(f"{files['summary'].name} is not a smear result")
    return stem or "smear", summary, clean_cells_table(table)


def _image_name(stem: str, summary: dict[str, Any]) -> str:
    path = ((summary.get("audit") or {}).get("input") or {}).get("path")
    return Path(path).name if path else stem


def _cells(name: str, table, classes: list[str]) -> list[ReportCell]:
    if "classified" not in table:
        return []
    out = []
    for r in table[table["classified"]].to_dict("records"):
        probs = sorted(
            ((c, float(r.get(f"p_{c}", np.nan))) for c in classes if np.isfinite(r.get(f"p_{c}", np.nan))),
            key=lambda cp: -cp[1],
        )
        predicted = str(r["class"])
        runner = next(((c, p) for c, p in probs if c != predicted), None)
        out.append(
            ReportCell(
                image=name,
                label=int(r["label"]),
                cls=str(r.get("corrected_class") or "").strip() or predicted,
                predicted=predicted,
                p_correct=float(r.get("p_correct", np.nan)),
                anomaly=float(r.get("anomaly", np.nan)),
                flagged=bool(r.get("flagged", False)),
                reason=_reason(r),
                runner_up=f"{runner[0]} {runner[1]:.2f}" if runner else "",
            )
        )
    return out


def _reason(row: dict[str, Any]) -> str:
    """Why a cell is flagged; results written before ``flag_reason`` existed say only the size check."""
    from ..classify.classifier import flag_reason

    if "flag_reason" in row:
        return str(row["flag_reason"] or "")
    return flag_reason(False, False, size=bool(row.get("size_implausible", False)))


def _class_order(classes: list[str], counts: dict[str, int], extra: dict[str, Any] | None) -> list[str]:
    """White-cell classes by count (as the differential lists them), then erythroblasts, then the rest."""
    from ..differential import differential_classes

    white, per100 = differential_classes(classes, extra)
    white = sorted(white, key=lambda c: -counts.get(c, 0))
    return white + per100 + [c for c in classes if c not in white and c not in per100]


def _model_info(first_audit: dict[str, Any], hashes: set[str]):
    """The model of the results (for class order, colours and the differential) and what to say."""
    from ..io.results import SavedSmear, saved_model

    info = dict(first_audit.get("model") or {})
    if len(hashes) > 1:
        info["warning"] = f"the results were made with {len(hashes)} different models; counts are pooled"
    saved = SavedSmear(result=None, stem="", image_path=None, image_sha256=None, model=info)
    try:
        model, warning = saved_model(saved)
    except InputError as exc:
        info["warning"] = "; ".join(w for w in (info.get("warning"), str(exc)) if w)
        return None, info
    if warning:
        info["warning"] = "; ".join(w for w in (info.get("warning"), warning) if w)
    else:  # the very model of the results: what it is for and cannot tell (not a stand-in's)
        from ..model.scope import about_model, class_notes

        info["about"] = about_model(model.metadata)
        info["class_notes"] = class_notes(model.metadata)
    return model, info


def _gallery_order(cells: list[ReportCell]) -> list[ReportCell]:
    """Flagged cells first (least sure first), then the others as they come (image by image)."""
    flagged = sorted((c for c in cells if c.flagged), key=lambda c: np.nan_to_num(c.p_correct, nan=-1.0))
    return flagged + [c for c in cells if not c.flagged]


def iter_collect(
    folder: str | Path,
    *,
    max_per_class: int = 200,
    max_review: int = 60,
    picture_px: int = 96,
) -> Generator[tuple[int, int, str], None, ReportData]:
    """Read a results folder for a report; yields ``(done, total, what)``, returns :class:`ReportData`.

    Raises
    ------
    InputError
        When the folder holds no smear result.
    """
    from ..batch.cohort import pooled_differential, pooled_domain_check, summary_fields

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    paths = result_summaries(folder)
    failed_rows = _failed_rows(folder)
    if not paths and not failed_rows and (folder / "predictions.csv").is_file():  # classify of cell images
        from .cells_folder import iter_collect_cells

        return (
            yield from iter_collect_cells(
                folder, max_per_class=max_per_class, max_review=max_review, picture_px=picture_px
            )
        )
    if not paths and not failed_rows:
        raise InputError(f"{folder} holds no smear results (NAME_summary.json from analyze or classify)")
    yield 0, len(paths), "reading the tables"
    images, tables, first_audit, hashes = _read_all(paths)
    images += [
        ReportImage(name=str(r["image"]), status="failed", error=str(r.get("error", ""))) for r in failed_rows
    ]
    model, model_info = _model_info(first_audit, hashes)
    classes, colours = _classes_and_colours(model, [t for _, t in tables.values()])
    names = {im.stem: im.name for im in images if im.status == "ok"}
    cells = {stem: _cells(names[stem], t, classes) for stem, (_, t) in tables.items()}
    extra = model.metadata.extra if model is not None else None
    shelves = arrange(
        [c for cs in cells.values() for c in cs], classes, colours, extra, max_per_class, max_review
    )
    classes = shelves["classes"]
    shown = {id(c) for c in shelves["review"]} | {id(c) for cs in shelves["by_class"].values() for c in cs}

    outline = {k: hex_rgb(colours[k]) for k in classes}
    for i, img in enumerate(x for x in images if x.status == "ok"):
        yield i, len(tables), f"pictures of {img.name}"
        mine = [c for c in cells[img.stem] if id(c) in shown]
        if mine:
            _draw(img, tables[img.stem][0], mine, outline, picture_px)
    yield len(tables), len(tables), "writing"

    ok_rows = [{"status": "ok", **summary_fields(x.summary)} for x in images if x.status == "ok"]
    return ReportData(
        folder=folder,
        created=time.strftime("%Y-%m-%d %H:%M"),
        model=model_info,
        parameters=dict(first_audit.get("parameters") or {}),
        classes=classes,
        colours=colours,
        images=images,
        differential=pooled_differential(ok_rows, classes, extra),
        domain_check=pooled_domain_check(ok_rows),
        **{k: v for k, v in shelves.items() if k != "classes"},
    )


def arrange(
    cells: list[ReportCell],
    classes: list[str],
    colours: dict[str, str],
    extra: dict[str, Any] | None,
    max_per_class: int,
    max_review: int,
) -> dict[str, Any]:
    """The cells on the page's shelves: ``classes`` in page order (a class the user added by correcting
    joins them, with a colour added to ``colours``), ``by_class`` (shown per class), ``totals``,
    ``flagged_totals``, ``review`` (flagged, uncorrected, most worth a look first) and ``n_review``."""
    from ..colours import user_class_colour
    from ..differential import differential_classes

    added = sorted({c.cls for c in cells} - set(classes))  # coloured as napari colours them
    model_colours = [colours[c] for c in classes if c in colours]
    for i, c in enumerate(added):
        colours[c] = user_class_colour(i, model_colours)
    classes = [*classes, *added]
    classes = _class_order(classes, {k: sum(c.cls == k for c in cells) for k in classes}, extra)
    by_class_all = {k: [c for c in cells if c.cls == k] for k in classes}
    open_flags = [c for c in cells if c.flagged and not c.corrected]
    white, per100 = differential_classes(classes, extra)
    return {
        "classes": classes,
        "by_class": {k: _gallery_order(v)[:max_per_class] for k, v in by_class_all.items() if v},
        "totals": {k: len(v) for k, v in by_class_all.items() if v},
        "flagged_totals": {k: sum(c.flagged for c in v) for k, v in by_class_all.items() if v},
        "review": _review_order(open_flags, set(white) | set(per100))[:max_review],
        "n_review": len(open_flags),
    }


def _read_all(paths: list[Path]):
    """Pass 1: each result's summary and cells table (by stem), the first audit, the models' hashes."""
    images: list[ReportImage] = []
    tables: dict[str, Any] = {}
    first_audit: dict[str, Any] = {}
    hashes: set[str] = set()
    for p in paths:
        try:
            stem, summary, table = _read_table(p)
        except InputError as exc:
            images.append(ReportImage(name=p.name, status="failed", error=str(exc)))
            continue
        audit = summary.get("audit") or {}
        first_audit = first_audit or audit
        if (audit.get("model") or {}).get("content_hash"):
            hashes.add(audit["model"]["content_hash"])
        images.append(ReportImage(name=_image_name(stem, summary), status="ok", summary=summary, stem=stem))
        tables[stem] = (p, table)
    return images, tables, first_audit, hashes


def _review_order(flagged: list[ReportCell], counted: set[str]) -> list[ReportCell]:
    """Flagged cells most worth a look first: those the differential counts (a wrong white-cell call
    changes it, a wrong platelet call does not), then by labelling priority (least sure, most unusual)."""
    from ..adapt.active import labelling_priority

    if not flagged:
        return []
    p_correct = np.array([c.p_correct for c in flagged])
    pri = labelling_priority(p_correct, np.array([c.anomaly for c in flagged]))
    other = np.array([c.cls not in counted for c in flagged])
    return [flagged[i] for i in np.lexsort((p_correct, -pri, other))]


def _draw(img: ReportImage, summary_path: Path, cells: list[ReportCell], outline, picture_px: int) -> None:
    """Pass 2: cut the pictures of one image's ``cells`` (its labels and pixels read now, then let go)."""
    from ..crops import as_uint8_rgb
    from ..io.results import read_smear_outputs, saved_image
    from .thumbnails import cell_thumbnail, data_uri

    try:
        saved = read_smear_outputs(summary_path)
        pixels, warning = saved_image(saved)
    except InputError as exc:
        img.error = f"no cell pictures: {exc}"
        return
    if warning:
        img.error = warning
    rgb = as_uint8_rgb(pixels)
    boxes = saved.result.table.set_index("label")[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]]
    red_px = float((img.summary.get("reference_diameter") or {}).get("pixels") or 0.0)
    for c in cells:
        pic = cell_thumbnail(
            rgb,
            saved.result.labels,
            c.label,
            tuple(boxes.loc[c.label]),
            picture_px,
            outline=outline[c.cls],
            min_side=RED_CELLS_PER_PICTURE * red_px,
        )
        c.picture = data_uri(pic)


def _failed_rows(folder: Path) -> list[dict[str, Any]]:
    """Images an ``analyze`` run could not finish (from its ``cohort.csv``), with the error."""
    import pandas as pd

    f = folder / "cohort.csv"
    if not f.is_file():
        return []
    try:
        rows = pd.read_csv(f).to_dict("records")
    except (OSError, ValueError, pd.errors.ParserError):
        return []
    done = {p.name[: -len("_summary.json")] for p in folder.glob("*_summary.json")}
    return [r for r in rows if r.get("status") != "ok" and Path(str(r.get("image"))).stem not in done]


def _classes_and_colours(model, tables) -> tuple[list[str], dict[str, str]]:
    if model is not None:
        md = model.metadata
        return list(md.classes), dict(zip(md.classes, md.colours, strict=True))
    classes: list[str] = []
    for t in tables:  # no model: the classes are the probability columns of the tables
        classes += [
            c[2:] for c in t.columns if c.startswith("p_") and c != "p_correct" and c[2:] not in classes
        ]
    from ..colours import default_colours

    return classes, dict(zip(classes, default_colours(classes), strict=True))
