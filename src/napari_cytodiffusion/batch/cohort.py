"""The cohort of a batch run: its table (one row per image), log, and what its images say pooled
(domain check, white-cell differential and alerts, a hint to pool the scale)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CytoDiffusionError


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
        **summary_fields(s),
        "seconds": s.get("seconds", {}).get("total"),
    }


def summary_fields(s: dict[str, Any]) -> dict[str, Any]:
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

        from ..export import write_cells_csv

        self.rows[row["image"]] = {k: v for k, v in row.items() if k != "trace"}
        write_cells_csv(pd.DataFrame(list(self.rows.values())), self.path)


def pooled_domain_check(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The domain check over every classified cell of the cohort's finished images.

    One field holds a few classified cells, too few for the per-image check; a slide's fields
    (or a cohort from one scanner) pooled are enough. ``None`` when no row has the counts.
    """
    from ..classify.anomaly import shift_test

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
    from ..model.registry import get_model

    md = get_model(model).metadata
    return pooled_differential(rows, md.classes, md.extra)


def pooled_differential(
    rows: list[dict[str, Any]], classes: list[str], extra: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """:func:`cohort_differential` for a model's ``classes`` (and metadata ``extra``)."""
    from ..differential import differential
    from ..pipeline import DEFAULT_TRIAGE, alert_reasons

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


def scale_hint(rows: list[dict[str, Any]]) -> str | None:
    """A hint to pool the scale when the images hold too few whole red cells for a steady one each.

    The typical image (median) must hold fewer than :data:`~napari_cytodiffusion.pipeline.OWN_SCALE_CELLS`
    whole red cells: cell-centred images, not smears. Images given a scale do not count.
    """
    from ..pipeline import OWN_SCALE_CELLS

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
