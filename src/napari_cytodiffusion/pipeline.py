"""The whole path for one smear: image → labels → cells table → crops → classes → summary.

:func:`iter_analyze` is a generator of :class:`Stage` progress items ending with a
:class:`SmearResult`, used by the CLI (``demo``, ``analyze``), the widgets and batch jobs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError

#: Violet stain (blue − green) above which a cell counts as nucleated/platelet ("stained") when
#: the field has too few cells to tell what its red cells look like.
STAINED_THRESHOLD = 0.15
#: With enough cells, "stained" means this far above the field's median cell (a red cell): stains
#: differ, and on TXL-PBC's Raabin-WBC fields 17 % of red cells passed the fixed 0.15. There, red
#: cells reach at most median + 0.05 (99th percentile), white cells at least + 0.16 and platelets
#: + 0.11 (64 val fields of three sources; ``benchmarks/smear_classification.py``).
STAINED_ABOVE_MEDIAN = 0.08
#: Fields with fewer cells than this use :data:`STAINED_THRESHOLD`.
MIN_CELLS_FOR_MEDIAN = 8
#: The relative threshold never exceeds this, so that a field whose median cell is itself
#: nucleated (a marrow aspirate, hyperleukocytosis) keeps its nucleated cells: white cells score
#: 0.29 or more (5th percentile) on every TXL-PBC source.
STAINED_CAP = 0.25

DEFAULT_TRIAGE = {
    "max_flagged_fraction": 0.10,
    "alert_classes": {"erythroblast": 0.0, "ig": 0.02},
    # which calls an alert class counts: "unflagged" (calls the classifier is sure of; a flagged call
    # is a star to review anyway) or "all". On mock PBC val slides of normal blood (IG 0.5 %, no
    # erythroblasts, 200 white cells; benchmarks/differential.py) every call fired the IG alert on
    # 79 % and the erythroblast alert on 58 % of slides, the unflagged calls on 14 % and 0 % (true
    # counts: 0 %); at IG 5 % / 1 erythroblast per 100 white cells on 98 % / 83 % (true: 97 % / 88 %)
    "alert_count": "unflagged",
    # cells called these classes keep their own flags but do not enter the flagged share or the
    # domain check; "auto": the :data:`SMEAR_FORMS` whose smear form the model's anomaly reference
    # lacks (see :func:`exempt_classes`)
    "flag_exempt_classes": "auto",
}
#: Classes whose cells on a smear take a form their single-cell training images hardly show: PBC's
#: platelet images are mostly large platelets and clumps (~0.8 red cells across), the single
#: platelets of any smear ~0.35. Against a reference fitted on the images alone, 86 % of the single
#: platelets of PBC's own val images scored anomalous (91-100 % on TXL-PBC).
SMEAR_FORMS = ("platelet",)
UNCLASSIFIED = "red cell (not classified)"


@dataclass
class Stage:
    stage: str
    done: int
    total: int


@dataclass
class SmearResult:
    labels: np.ndarray
    table: Any  # pandas.DataFrame
    summary: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    classification: Any = None


def stained_score(image_rgb01: np.ndarray, labels: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """90th percentile of (blue − green) inside each cell: high for nuclei, granules, platelets."""
    from scipy import ndimage

    v = image_rgb01[..., 2] - image_rgb01[..., 1]
    if len(label_ids) == 0:
        return np.zeros(0)
    return np.asarray(
        ndimage.labeled_comprehension(v, labels, label_ids, lambda a: np.percentile(a, 90), float, 0.0)
    )


def stained_threshold(scores: np.ndarray) -> float:
    """The stained score a cell of this field must exceed to count as nucleated or a platelet.

    Red cells dominate a smear, so the median score is a red cell's: the threshold is
    :data:`STAINED_ABOVE_MEDIAN` above it, at most :data:`STAINED_CAP`. A field with few cells
    (a single-cell image, a crop) uses the fixed :data:`STAINED_THRESHOLD`.
    """
    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if scores.size < MIN_CELLS_FOR_MEDIAN:
        return STAINED_THRESHOLD
    return min(float(np.median(scores)) + STAINED_ABOVE_MEDIAN, STAINED_CAP)


#: The field's scale is set by at least this many whole red cells (else whole cells, else all cells).
MIN_REFERENCE_CELLS = 3


def whole_red_cells(table, score: np.ndarray | None = None) -> np.ndarray | None:
    """Which cells of the table are whole red cells (a boolean mask), ``None`` without stain scores.

    Whole: not cut by the image border (a cut cell looks smaller than it is). Red: not stained
    (``score``, default the table's ``stain_score`` column, against :func:`stained_threshold`).
    """
    if score is None and "stain_score" in table:
        score = table["stain_score"].to_numpy(dtype=float)
    if score is None:
        return None
    score = np.asarray(score, dtype=float)
    whole = ~table["touches_border"].to_numpy(dtype=bool)
    return whole & (score <= stained_threshold(score)) if len(score) else whole


def reference_diameter(table, score: np.ndarray | None = None) -> tuple[float | None, str]:
    """The field's typical red-cell diameter in pixels, and which cells gave it.

    ``score``: the cells' :func:`stained_score` (default: the table's ``stain_score`` column,
    which :func:`iter_analyze` adds; without either, red and white cells are not told apart).

    It sets the physical scale of every crop (:func:`~napari_cytodiffusion.crops.smear_crop_side`)
    and the unit of cell sizes (:mod:`~napari_cytodiffusion.classify.size`). It is the median
    equivalent diameter of the :func:`whole_red_cells`. With fewer than
    :data:`MIN_REFERENCE_CELLS` of those, the whole cells of any kind, then all cells.
    """
    if not len(table):
        return None, "no cells"
    d = table["equivalent_diameter"].to_numpy(dtype=float)
    red = whole_red_cells(table, score)
    if red is not None and red.sum() >= MIN_REFERENCE_CELLS:
        return float(np.median(d[red])), "whole red cells"
    whole = ~table["touches_border"].to_numpy(dtype=bool)
    if whole.sum() >= MIN_REFERENCE_CELLS:
        return float(np.median(d[whole])), "whole cells"
    return float(np.median(d)), "all cells"


#: an image's own red cells say its scale differs from the pooled one when at least this many ...
OWN_SCALE_CELLS = 10
#: ... have a median diameter more than this share away from it (macrocytes are ~10 % larger)
OFF_SCALE_TOLERANCE = 0.2


def pooled_reference(diameters: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """One red-cell diameter for many images of one camera: the median over all their whole red cells.

    ``diameters``: each image's :func:`whole_red_cells` diameters (pixels). For cell-centred images
    (one white cell and a few red cells each, as an analyser exports them) a field's own estimate
    rests on a handful of red cells, often cut by the border; pooled, the scale is as steady as the
    camera's. An image whose own red cells (at least :data:`OWN_SCALE_CELLS`) are more than
    :data:`OFF_SCALE_TOLERANCE` off the pooled median was taken at another scale: it is listed in
    ``off_scale``, left out of the pool (whose median is then taken again) and keeps its own
    estimate. ``None`` with fewer than :data:`MIN_REFERENCE_CELLS` cells in all.
    """
    per = {k: np.asarray(v, dtype=float) for k, v in diameters.items()}

    def median(names) -> tuple[float | None, int]:
        pool = np.concatenate([per[k] for k in names]) if names else np.zeros(0)
        return (float(np.median(pool)) if pool.size >= MIN_REFERENCE_CELLS else None), int(pool.size)

    pixels, _ = median(list(per))
    if pixels is None:
        return None
    # an image of another camera or magnification stands out by its own red cells' size
    off = sorted(
        k
        for k, v in per.items()
        if v.size >= OWN_SCALE_CELLS and abs(np.median(v) / pixels - 1) > OFF_SCALE_TOLERANCE
    )
    kept = [k for k in per if k not in off]
    pixels, cells = median(kept)
    if pixels is None:
        return None
    return {
        "pixels": round(pixels, 2),
        "cells": cells,
        "images": int(sum(per[k].size > 0 for k in kept)),
        "of_images": len(per),
        "off_scale": off,
    }


def check_red_cell_px(value: float | None, name: str = "a red cell's diameter") -> None:
    """Raise :class:`InputError` unless ``value`` (a given red-cell diameter) is None or positive pixels."""
    if value is not None and not (np.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number of pixels, not {value:g}")


def run_reference(summary: dict[str, Any] | None, table) -> float | None:
    """The scale a finished run used (its summary's, which may have been given), else the table's estimate."""
    given = ((summary or {}).get("reference_diameter") or {}).get("pixels")
    return float(given) if given else reference_diameter(table)[0]


def run_crops(image: np.ndarray, labels: np.ndarray, preprocessing, summary, table, cells=None) -> np.ndarray:
    """The model crops of a finished run's ``cells`` (rows of its cells ``table``; all by default), cut
    at the scale the run used (:func:`run_reference`): what the classifier saw of each cell."""
    from .crops import crops_from_labels

    cells = table if cells is None else cells
    return crops_from_labels(
        image,
        labels,
        preprocessing,
        cells["label"].to_numpy(),
        cells[["centroid_y", "centroid_x"]].to_numpy(),
        cells["equivalent_diameter"].to_numpy(),
        reference_diameter=run_reference(summary, table),
    )[0]


#: The size check needs the smear's typical cell to be a red cell: at least this many cells ...
MIN_CELLS_FOR_SIZE = MIN_CELLS_FOR_MEDIAN
#: ... of which at most this share is stained (a field of hand-painted white cells, a crop
#: around one cell, a marrow aspirate has no red-cell reference)
MAX_STAINED_SHARE_FOR_SIZE = 0.5


def size_reference_problem(
    table, image_rgb01: np.ndarray, labels: np.ndarray, score: np.ndarray | None = None
) -> str | None:
    """Why this field has no red cells to measure the size check's sizes against, or None.

    ``score``: the cells' :func:`stained_score`, when already computed.
    """
    n = len(table)
    if n < MIN_CELLS_FOR_SIZE:
        return (
            f"{n} cell{'' if n == 1 else 's'} (needs {MIN_CELLS_FOR_SIZE} or more to know a red cell's size)"
        )
    if score is None:
        score = stained_score(image_rgb01, labels, table["label"].to_numpy())
    # the same rule that picks the cells to classify; its cap keeps a field of white cells stained
    share = float(np.mean(score > stained_threshold(score)))
    if share > MAX_STAINED_SHARE_FOR_SIZE:
        return f"{share:.0%} of the cells are stained, so the typical cell is not a red cell"
    return None


def select_cells(
    table,
    image_rgb01: np.ndarray,
    labels: np.ndarray,
    which: str = "stained",
    min_area: int = 0,
    only_labels: list[int] | None = None,
    score: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask over the table's rows: which cells go to the classifier.

    ``which`` is "stained" (nucleated cells and platelets, judged against the field's own red
    cells: :func:`stained_threshold`) or "all"; ``min_area`` drops small
    cells; ``only_labels`` restricts the choice to these label ids (a user's selection);
    ``score``: the cells' :func:`stained_score`, when already computed.
    """
    if which not in ("stained", "all"):
        raise InputError(f"cells must be 'stained' or 'all', not {which!r}")
    sel = table["area"].to_numpy() >= int(min_area)
    if only_labels is not None:
        wanted = np.isin(table["label"].to_numpy(), np.asarray(list(only_labels), dtype=np.int64))
        if not wanted.any():
            raise InputError("none of the selected labels exists in the labels layer")
        sel &= wanted
    if which == "stained":
        if score is None:
            score = stained_score(image_rgb01, labels, table["label"].to_numpy())
        sel &= score > stained_threshold(score)
    return sel


def summarize(
    table,
    classes: list[str],
    triage: dict[str, Any] | None = None,
    anomaly_reference: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Differential count, flagged cells and a triage verdict (routine / needs review).

    ``differential``: the white-cell differential with 95 % intervals
    (:func:`~napari_cytodiffusion.differential.differential`; ``extra``: the model's metadata
    ``extra``, which may say which classes are white cells).

    With ``anomaly_reference`` (the model's ``calibration["anomaly"]``: ``threshold`` and
    ``specificity``), the summary also says whether the classified cells, as a set, look unlike
    the model's calibration cells (:func:`~napari_cytodiffusion.classify.anomaly.domain_check`);
    if so, that is a reason for review.
    """
    from .differential import differential

    triage = {**DEFAULT_TRIAGE, **(triage or {})}
    classified = table[table["classified"]] if "classified" in table else table.iloc[0:0]
    n = len(classified)
    # a user's correction (corrected_class) is the cell's class in the counts, the differential and
    # the alerts, and a sure call; flags, the size check and the domain check stay the model's
    calls = classified["class"].astype(str)
    reviewed = np.zeros(n, bool)
    if "corrected_class" in classified and n:
        corr = classified["corrected_class"].fillna("").astype(str).str.strip()
        reviewed = (corr != "").to_numpy()
        calls = calls.where(~reviewed, corr)
    counted = [*classes, *sorted(set(calls[reviewed]) - set(classes))]  # classes a user added
    counts = {c: int((calls == c).sum()) for c in counted}
    pct = {c: (100.0 * k / n if n else 0.0) for c, k in counts.items()}
    n_flag = int(classified["flagged"].sum()) if n else 0
    left_out = exempt_classes(triage, anomaly_reference, classes)
    exempt = [c for c in left_out if counts.get(c)]
    scored = classified[~classified["class"].isin(exempt)] if exempt else classified
    m, m_flag = len(scored), int(scored["flagged"].sum()) if len(scored) else 0
    reasons = []
    if m and m_flag / m > triage["max_flagged_fraction"]:
        but = f" other than {', '.join(exempt)}" if exempt else ""
        reasons.append(
            f"{m_flag / m:.0%} of classified cells{but} flagged (> {triage['max_flagged_fraction']:.0%})"
        )
    off_size = (
        classified["size_implausible"].to_numpy(dtype=bool)
        if "size_implausible" in classified
        else np.zeros(n, bool)
    )
    by_look = (
        classified["class_by_appearance"] if "class_by_appearance" in classified else classified["class"]
    )
    stuck = off_size & (by_look == classified["class"]).to_numpy(dtype=bool)  # no class fits its size
    if triage["alert_count"] not in ("unflagged", "all"):
        raise InputError(f"triage alert_count must be 'unflagged' or 'all', got {triage['alert_count']!r}")
    sure = ~stuck
    if triage["alert_count"] == "unflagged" and n:
        sure &= ~classified["flagged"].to_numpy(dtype=bool)
    sure |= reviewed
    alert_counts = Counter(calls[sure]) if n else Counter()
    diff = differential(counts, counted, extra)
    reasons += alert_reasons(
        {c: alert_counts[c] for c in triage["alert_classes"] if c in counts}, diff, n, triage
    )
    n_off = int(off_size.sum())
    if n_off:
        moves = Counter(
            f"{a} → {b}" if a != b else f"{a}, no class fits"
            for a, b in zip(by_look[off_size], classified["class"][off_size], strict=True)
        )
        reasons.append(
            f"{n_off} cell{'' if n_off == 1 else 's'} whose size rules out the class "
            f"{'its' if n_off == 1 else 'their'} appearance suggests ("
            + ", ".join(f"{m} {k}" for m, k in moves.most_common())
            + ")"
        )
    domain = None
    if m and "anomaly" in scored:
        from .classify.anomaly import domain_check_against, shift_warning

        domain = domain_check_against(scored["anomaly"].to_numpy(dtype=float), anomaly_reference)
        if domain and domain["shifted"]:
            reasons.append(shift_warning(domain))
    return {
        "n_cells": int(len(table)),
        "n_classified": n,
        "n_not_classified": int(len(table) - n),
        "n_corrected": int(reviewed.sum()),
        "counts": counts,
        "percent": pct,
        "differential": diff,
        "n_flagged": n_flag,
        "n_size_implausible": n_off,
        "percent_flagged": 100.0 * n_flag / n if n else 0.0,
        # what the flagged share of the triage and the domain check counted
        "n_triaged": m,
        "n_triaged_flagged": m_flag,
        "flag_exempt_classes": left_out,
        "verdict": "needs review" if reasons else "routine",
        "reasons": reasons,
        # the calls each alert class counted (triage alert_count), for alerts over many images
        "alert_counts": {c: int(alert_counts[c]) for c in triage["alert_classes"] if c in counts},
        "triage_thresholds": triage,
        "domain_check": domain,
    }


def alert_reasons(
    alert_counts: dict[str, int], diff: dict[str, Any] | None, n_classified: int, triage: dict[str, Any]
) -> list[str]:
    """The triage's alerts (``alert_classes``) for counted calls, one field's or many pooled.

    A white-cell class's limit is a share of the white cells (IG > 2 %), as a differential reports
    it; any other class's a share of the classified cells.
    """
    triage = {**DEFAULT_TRIAGE, **triage}
    what = "unflagged call" if triage["alert_count"] == "unflagged" else "cell"
    out = []
    for cls, limit in triage["alert_classes"].items():
        if cls not in alert_counts:
            continue
        white = bool(diff and diff["leukocytes"] and cls in diff["percent"])
        base, of = (diff["leukocytes"], " of white cells") if white else (n_classified, "")
        k = int(alert_counts[cls])
        if base and k / base > limit:
            out.append(f"{cls}: {k} {what}{'' if k == 1 else 's'} ({100.0 * k / base:.1f}%{of})")
    return out


def exempt_classes(
    triage: dict[str, Any], anomaly_reference: dict[str, Any] | None, classes: list[str]
) -> list[str]:
    """Classes left out of the flagged share and the domain check (triage ``flag_exempt_classes``).

    A list is taken as given. ``"auto"`` (the default) leaves out each of :data:`SMEAR_FORMS` that
    the model's anomaly reference has no smear form for (a size-bound component of its profile,
    :func:`~napari_cytodiffusion.classify.anomaly.fit_component`): there, that class's cells on a
    smear score anomalous whatever the lab. The shipped models have one for platelets
    (``scripts/calibrate_smear_platelets.py``), so their platelets count; a model calibrated on
    single-cell images only (one trained or adapted by a user) keeps them out.
    """
    value = triage.get("flag_exempt_classes", "auto")
    if value != "auto":
        return [str(c) for c in value or []]
    profile = (anomaly_reference or {}).get("profile") or {}
    covered = {
        classes[int(c["class"])]
        for c in profile.get("components", [])
        if "max_size" in c and 0 <= int(c["class"]) < len(classes)
    }
    return [c for c in SMEAR_FORMS if c in classes and c not in covered]


def iter_analyze(
    image: np.ndarray,
    model=None,
    segment_params=None,
    labels: np.ndarray | None = None,
    speed: str = "balanced",
    cells: str = "stained",
    min_area: int = 0,
    only_labels: list[int] | None = None,
    seed: int = 0,
    triage: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    size_check: bool = True,
    red_cell_px: float | None = None,
) -> Iterator[Stage | SmearResult]:
    """Segment (unless ``labels`` are given) and classify one smear.

    With ``size_check`` (and size ranges in the model's metadata, :mod:`.classify.size`) each
    cell is called the best class its size allows; see :func:`mark_sizes`.

    ``red_cell_px``: a red cell's diameter in pixels, when the user knows it (from the camera's
    pixel size, ~7.5 µm per red cell). It replaces the field's estimate
    (:func:`reference_diameter`) as the scale of crops and sizes, and lets the size check run on
    fields with too few red cells to measure one (a crop around a single cell).
    """
    from .classify.classifier import Classification, Progress, calibration_for, iter_classify
    from .classify.size import allowed_classes, class_ranges, size_ratio
    from .crops import crops_from_labels
    from .io.images import to_rgb_float
    from .model.registry import get_model
    from .segmentation.cellpose_seg import SegmentParams, iter_segment
    from .segmentation.table import cells_table, check_labels, compact_labels

    check_red_cell_px(red_cell_px)
    t0 = time.perf_counter()
    rgb = to_rgb_float(image)
    params: dict[str, Any] = {
        "speed": speed,
        "cells": cells,
        "min_area": min_area,
        "seed": seed,
        "size_check": size_check,
        "red_cell_px": None if red_cell_px is None else float(red_cell_px),
        "only_labels": None if only_labels is None else sorted(int(v) for v in only_labels),
    }
    if labels is None:
        segment_params = segment_params or SegmentParams()
        scale: dict[str, Any] = {}
        for item in iter_segment(rgb, segment_params, should_stop=should_stop, info=scale):
            if isinstance(item, tuple):
                yield Stage("segmenting", *item)
            else:
                labels = item
        params["segmentation"] = {**segment_params.to_dict(), **scale}
    else:
        labels = check_labels(labels, rgb.shape[:2])
        params["segmentation"] = "given labels"
    given, (labels, original_ids) = labels, compact_labels(labels)  # very large ids: measured as 1..N
    if original_ids is not None and only_labels is not None:
        wanted = np.asarray(sorted(int(v) for v in only_labels), dtype=np.uint64)
        only_labels = np.flatnonzero(np.isin(original_ids, wanted)).tolist()
    t_seg = time.perf_counter() - t0
    model = model if model is not None and not isinstance(model, str) else get_model(model)
    table = cells_table(labels, rgb)
    model_ranges = class_ranges(model.metadata.extra)
    want_sizes = size_check and bool(model_ranges)
    score = stained_score(rgb, labels, table["label"].to_numpy())
    table["stain_score"] = score
    sel = select_cells(table, rgb, labels, cells, min_area, only_labels, score=score)
    diameters = table["equivalent_diameter"].to_numpy(dtype=float)
    if red_cell_px is not None:
        reference, reference_cells = float(red_cell_px), "given"
    else:
        reference, reference_cells = reference_diameter(table, score)
    crops, _ = crops_from_labels(
        rgb,
        labels,
        model.metadata.preprocessing,
        table["label"].to_numpy()[sel],
        table[["centroid_y", "centroid_x"]].to_numpy()[sel],
        diameters[sel],
        reference_diameter=reference,
    )
    sizes = size_ratio(diameters, reference)
    size_problem = (
        size_reference_problem(table, rgb, labels, score) if want_sizes and red_cell_px is None else None
    )
    ranges = model_ranges if want_sizes and not size_problem else {}
    allowed = allowed_classes(sizes[sel], model.classes, ranges) if ranges else None
    # sizes also choose the anomaly reference of a cell too small for any class but platelet
    # (a smear's single platelet); only where the size check trusts the scale
    known = sizes[sel] if ranges else None
    result = None
    for item in iter_classify(
        model, crops, speed=speed, seed=seed, should_stop=should_stop, allowed=allowed, sizes=known
    ):
        if isinstance(item, Progress):
            yield Stage("classifying", item.done, item.total)
        elif isinstance(item, Classification):
            result = item
    table = attach_classification(table, sel, result, model.classes)
    table = mark_sizes(table, sizes, ranges)
    summary = summarize(
        table, model.classes, triage, calibration_for(model, speed).get("anomaly"), model.metadata.extra
    )
    red = whole_red_cells(table, score)
    summary["reference_diameter"] = {
        "pixels": None if reference is None else round(reference, 2),
        "cells": reference_cells,
        # how many whole red cells the field holds: a few give a noisy scale (see analyze --pool-scale)
        "whole_red_cells": int(red.sum()) if red is not None else 0,
    }
    if not size_check:
        summary["size_check"] = "off"
    elif not model_ranges:
        summary["size_check"] = "no class sizes in the model"
    else:
        summary["size_check"] = f"not applied: {size_problem}" if size_problem else "applied"
    summary["seconds"] = {
        "segmentation": t_seg,
        "classification": result.seconds if result else 0.0,
        "total": time.perf_counter() - t0,
    }
    params["model"] = model.short_id()
    if original_ids is not None:  # the cells keep the ids they were given
        table["label"] = original_ids[table["label"].to_numpy(dtype=np.int64)].astype(np.int64)
    yield SmearResult(
        labels=given.astype(np.uint32),
        table=table,
        summary=summary,
        parameters=params,
        classification=result,
    )


def attach_classification(table, sel: np.ndarray, result, classes: list[str]):
    """Add class, probabilities, certainty, P(correct), anomaly and flags to the cells table."""
    table = table.copy()
    n = len(table)
    table["classified"] = sel
    table["class"] = UNCLASSIFIED
    table["class_by_appearance"] = UNCLASSIFIED
    for col in ("certainty", "p_correct", "anomaly"):
        table[col] = np.nan
    table["flagged"] = False
    table["flag_reason"] = ""
    for c in classes:
        table[f"p_{c}"] = np.nan
    if result is not None and len(result):
        idx = np.flatnonzero(sel)
        table.loc[idx, "class"] = result.pred_names
        seen = result.pred if result.by_appearance is None else result.by_appearance
        table.loc[idx, "class_by_appearance"] = [classes[i] for i in seen]
        table.loc[idx, "certainty"] = result.certainty
        table.loc[idx, "p_correct"] = result.p_correct
        table.loc[idx, "anomaly"] = result.anomaly
        table.loc[idx, "flagged"] = result.flagged
        table.loc[idx, "flag_reason"] = result.flag_reasons
        for j, c in enumerate(classes):
            table.loc[idx, f"p_{c}"] = result.probs[:, j]
    table["corrected_class"] = ""
    assert len(table) == n
    return table


def mark_sizes(table, sizes: np.ndarray, ranges: dict[str, tuple[float, float]]):
    """Add ``size`` (in the smear's reference red cells) and ``size_implausible``; flag those cells.

    ``size_implausible``: the class the cell's appearance alone picks (``class_by_appearance``)
    lies outside that class's size range on the model's training smears. Such a cell is called
    the best class its size allows (done by the classifier, :func:`~.classify.classifier.finish`),
    and flagged: appearance and size disagree, so a person should look. A cell that no class
    fits keeps its appearance call and counts towards no alert class in :func:`summarize` (a
    platelet-sized blob is not an erythroblast alert).
    """
    from .classify.classifier import flag_reason
    from .classify.size import implausible

    table = table.copy()
    table["size"] = np.asarray(sizes, dtype=float)
    classified = table["classified"].to_numpy(dtype=bool)
    bad = implausible(table["class_by_appearance"].tolist(), table["size"].to_numpy(), ranges)
    table["size_implausible"] = bad & classified
    table["flagged"] = table["flagged"].to_numpy(dtype=bool) | table["size_implausible"].to_numpy()
    if "flag_reason" in table:
        size_word = flag_reason(False, False, size=True)
        reasons = table["flag_reason"].fillna("").astype(str).tolist()
        table["flag_reason"] = [
            "; ".join(x for x in (r, size_word) if x) if off else r
            for r, off in zip(reasons, table["size_implausible"].to_numpy(), strict=True)
        ]
    return table


def analyze(image: np.ndarray, **kwargs: Any) -> SmearResult:
    """Run :func:`iter_analyze` to completion."""
    out = None
    for item in iter_analyze(image, **kwargs):
        out = item
    return out
