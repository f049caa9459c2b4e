"""Turning results into layer data: colours by class, uncertainty colours, legend (no Qt, no napari)."""

from __future__ import annotations

import numpy as np

from .colours import user_class_colour

UNCLASSIFIED_COLOUR = "#bbbbbb"


def hex_to_rgba(colour: str, alpha: float = 1.0) -> np.ndarray:
    c = colour.lstrip("#")
    return np.array([int(c[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [alpha], dtype=np.float32)


def user_classes(table, classes: list[str]) -> list[str]:
    """Classes the user gave cells (``corrected_class``) that the model does not have, sorted."""
    if "corrected_class" not in table:
        return []
    used = table["corrected_class"].fillna("").astype(str).str.strip()
    return sorted(set(used[used != ""]) - set(classes))


def class_colours(table, classes: list[str], colours: list[str]) -> np.ndarray:
    """RGBA per row of the cells table by its (corrected, else predicted) class."""
    lut = {c: hex_to_rgba(col) for c, col in zip(classes, colours, strict=True)}
    lut.update(
        {c: hex_to_rgba(user_class_colour(i, colours)) for i, c in enumerate(user_classes(table, classes))}
    )
    grey = hex_to_rgba(UNCLASSIFIED_COLOUR)
    return (
        np.stack([lut.get(c, grey) for c in effective_class(table)])
        if len(table)
        else np.zeros((0, 4), np.float32)
    )


def effective_class(table) -> list[str]:
    """The user's correction where there is one, the prediction otherwise."""
    predicted = table["class"].astype(str)
    if "corrected_class" not in table:
        return predicted.tolist()
    corrected = table["corrected_class"].fillna("").astype(str)
    return corrected.where(corrected != "", predicted).tolist()


def label_colour_dict(table, mode: str, classes: list[str], colours: list[str]) -> dict:
    """{label: RGBA} for a DirectLabelColormap: by class, by uncertainty (1-P(correct)) or by anomaly."""
    import matplotlib

    out: dict = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    labels = table["label"].to_numpy()
    if mode == "class":
        cols = class_colours(table, classes, colours)
        cols[~table["classified"].to_numpy(bool), 3] = 0.35
    else:
        value = (
            (1 - table["p_correct"].to_numpy(float))
            if mode == "uncertainty"
            else table["anomaly"].to_numpy(float)
        )
        finite = np.isfinite(value)
        lo, hi = (np.nanmin(value[finite]), np.nanmax(value[finite])) if finite.any() else (0.0, 1.0)
        norm = np.clip((value - lo) / max(hi - lo, 1e-9), 0, 1)
        cols = matplotlib.colormaps["magma"](np.nan_to_num(norm)).astype(np.float32)
        cols[~finite] = hex_to_rgba(UNCLASSIFIED_COLOUR, 0.35)
    for lab, col in zip(labels, cols, strict=True):
        out[int(lab)] = col
    return out


def legend_html(
    summary: dict, classes: list[str], colours: list[str], notes: dict[str, str] | None = None
) -> str:
    """The legend of a classified smear: verdict, counts and differential per class, reasons, scale.

    ``notes``: what a class holds where the model's scope says
    (:func:`~napari_cytodiffusion.model.scope.class_notes`), shown for the differential's classes
    that were counted (a neutrophil share holds band and segmented neutrophils alike).
    """
    rows = [
        f"<b>{summary['verdict'].upper()}</b> — {summary['n_classified']} classified, "
        f"{summary['n_flagged']} flagged ({summary['percent_flagged']:.1f}%)"
    ]
    from .differential import percent_text as pct

    diff = summary.get("differential")
    if diff and diff["leukocytes"]:
        n = diff["leukocytes"]
        rows.append(
            f"white-cell differential of {n} cell{'' if n == 1 else 's'} (95% CI)"
            + (" — too few for a precise one" if diff["imprecise"] else "")
        )
    for c, col in zip(classes, colours, strict=True):
        k = summary["counts"].get(c, 0)
        swatch = f"<span style='color:{col}'>&#9632;</span> {c}: {k}"
        if diff and diff["leukocytes"] and c in diff["percent"]:
            lo, hi = diff["ci95"][c]
            rows.append(f"{swatch} — {pct(diff['percent'][c])}% ({pct(lo)}–{pct(hi)}%)")
        elif diff and diff["leukocytes"] and c in diff["per_100_leukocytes"]:
            rows.append(f"{swatch} — {pct(diff['per_100_leukocytes'][c]['value'])} per 100 white cells")
        else:
            rows.append(f"{swatch} ({summary['percent'].get(c, 0):.1f}% of classified)")
    if diff and diff["leukocytes"]:
        counted = [*diff["percent"], *diff["per_100_leukocytes"]]
        rows += [
            f"<span style='color:#9e9e9e'>{c} — {(notes or {})[c]}</span>"
            for c in counted
            if c in (notes or {}) and summary["counts"].get(c)
        ]
    added = sorted(c for c in summary["counts"] if c not in classes)  # classes the user gave cells
    for i, c in enumerate(added):
        rows.append(
            f"<span style='color:{user_class_colour(i, colours)}'>&#9632;</span> {c} (your class): "
            f"{summary['counts'][c]}"
        )
    rows += [f"<i>{r}</i>" for r in summary.get("reasons", [])]
    left_out = [c for c in summary.get("flag_exempt_classes") or [] if summary["counts"].get(c)]
    if left_out:  # the model has no reference for their smear form (pipeline.exempt_classes)
        rows.append(f"{', '.join(left_out)}: not in the flagged share or the domain check")
    if str(summary.get("size_check", "")).startswith("not applied"):
        rows.append(f"size check {summary['size_check']}")
    ref = summary.get("reference_diameter") or {}
    if ref.get("pixels"):  # the scale every crop and size of this field rests on
        how = str(ref.get("cells", ""))
        if how in ("whole red cells", "given") or how.startswith("pooled"):
            note = {"whole red cells": ""}.get(how, f" ({how})")
            rows.append(f"scale: a red cell is {ref['pixels']:.1f} px across{note}")
        else:
            rows.append(f"scale: {ref['pixels']:.1f} px, from {how} (fewer than 3 whole red cells)")
    return "<br>".join(rows)


def points_layer_kwargs(table, classes: list[str], colours: list[str]) -> tuple[np.ndarray, dict]:
    """Coordinates and napari ``Points`` keyword arguments for a cells table.

    Fill = class colour (the user's correction where there is one), border = uncertainty
    (1 − P(correct), magma), stars for flagged cells, small discs for cells not classified.
    """
    features = table.copy()
    features["uncertainty"] = 1 - features["p_correct"].astype(float).fillna(1.0)
    flagged = features["flagged"].to_numpy(dtype=bool)
    classified = features["classified"].to_numpy(dtype=bool)
    kwargs = {
        "features": features,
        "face_color": class_colours(table, classes, colours),
        "border_color": "uncertainty",
        "border_colormap": "magma",
        "border_width": 0.25,
        "border_width_is_relative": True,
        "size": np.where(flagged, 18, np.where(classified, 12, 5)),
        "symbol": np.where(flagged, "star", "disc"),
    }
    return table[["centroid_y", "centroid_x"]].to_numpy(dtype=float), kwargs
