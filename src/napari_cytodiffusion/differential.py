"""The white-cell differential of a smear (or of many fields pooled), with its counting error.

A differential gives each kind of white cell as a share of the white cells counted; nucleated
red cells (erythroblasts) are given per 100 white cells, platelets are not part of it. A
differential of few cells is imprecise however good the classifier: 5 monocytes in 100 white
cells is compatible with 1.6-11.3 % (Rümke, *Blut* 1979; CLSI H20-A2). Each share therefore
comes with its exact binomial 95 % interval (Clopper-Pearson), which covers the counting error
only, not classification errors.

Which classes are white cells is known for the usual names (PBC's ``neutrophil``, ``ig``, ...);
a model may say it in its metadata (``extra["differential"]``: ``{"leukocytes": [...],
"per_100_leukocytes": [...]}``). Classes of neither kind are listed as not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: class names (lower case) of white cells, as models name them
LEUKOCYTES = frozenset(
    {
        "neutrophil",
        "segmented neutrophil",
        "band",
        "band neutrophil",
        "lymphocyte",
        "reactive lymphocyte",
        "atypical lymphocyte",
        "variant lymphocyte",
        "large granular lymphocyte",
        "monocyte",
        "eosinophil",
        "basophil",
        "ig",
        "immature granulocyte",
        "metamyelocyte",
        "myelocyte",
        "promyelocyte",
        "blast",
        "myeloblast",
        "lymphoblast",
        "plasma cell",
    }
)
#: class names (lower case) counted per 100 white cells, not among them
PER_100_LEUKOCYTES = frozenset({"erythroblast", "nrbc", "nucleated red cell", "nucleated red blood cell"})
#: below this many white cells a differential is called imprecise (the usual manual count is 100-200)
MIN_LEUKOCYTES = 100


def differential_classes(
    classes: list[str], extra: Mapping[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """``(white-cell classes, classes counted per 100 white cells)`` of a model's class list."""
    spec = (extra or {}).get("differential") or {}
    if spec:
        known = set(classes)
        return (
            [c for c in spec.get("leukocytes", []) if c in known],
            [c for c in spec.get("per_100_leukocytes", []) if c in known],
        )
    return (
        [c for c in classes if c.lower() in LEUKOCYTES],
        [c for c in classes if c.lower() in PER_100_LEUKOCYTES],
    )


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion ``k / n``, as fractions; (0, 1) for n = 0."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n], got k={k}, n={n}")
    a = (1.0 - confidence) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def differential(
    counts: Mapping[str, int], classes: list[str], extra: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The white-cell differential of class counts (one field, or many fields summed).

    Returns
    -------
    dict or None
        ``leukocytes`` (white cells counted), ``percent`` and ``ci95`` (per white-cell class, in
        percent), ``per_100_leukocytes`` (e.g. erythroblasts), ``not_counted`` (other classes with
        cells, e.g. platelets), ``imprecise`` (fewer than :data:`MIN_LEUKOCYTES` white cells) and
        ``method``. None when the model has no white-cell class.
    """
    white, per100 = differential_classes(classes, extra)
    if not white:
        return None
    n = int(sum(int(counts.get(c, 0)) for c in white))
    percent, ci = {}, {}
    for c in white:
        k = int(counts.get(c, 0))
        lo, hi = binomial_interval(k, n)
        percent[c] = round(100.0 * k / n, 2) if n else None
        ci[c] = [round(100.0 * lo, 2), round(100.0 * hi, 2)] if n else None
    return {
        "leukocytes": n,
        "percent": percent,
        "ci95": ci,
        "per_100_leukocytes": {
            c: {
                "count": int(counts.get(c, 0)),
                "value": round(100.0 * int(counts.get(c, 0)) / n, 2) if n else None,
            }
            for c in per100
        },
        "not_counted": [c for c in classes if c not in white and c not in per100 and counts.get(c)],
        "imprecise": n < MIN_LEUKOCYTES,
        "method": "share of white cells; exact binomial (Clopper-Pearson) 95% interval, counting error only",
    }


def percent_text(p: float) -> str:
    """A share as people read it: one decimal under 10 %, none above (``"0.5"``, ``"61"``)."""
    return f"{p:.1f}" if p < 10 else f"{p:.0f}"


def differential_line(d: Mapping[str, Any] | None) -> str | None:
    """One line for a log or status: ``"white-cell differential of 120 cells: neutrophil 61% (52-70), ..."``."""
    if not d or not d["leukocytes"]:
        return None
    parts = [
        f"{c} {percent_text(p)}% ({percent_text(d['ci95'][c][0])}-{percent_text(d['ci95'][c][1])})"
        for c, p in sorted(d["percent"].items(), key=lambda kv: -kv[1])
    ]
    extra = [
        f"{c} {percent_text(v['value'])} per 100 white cells"
        for c, v in d["per_100_leukocytes"].items()
        if v["count"]
    ]
    n = d["leukocytes"]
    line = f"white-cell differential of {n} cell{'' if n == 1 else 's'} (95% CI): " + ", ".join(parts + extra)
    if d["imprecise"]:
        line += f"; fewer than {MIN_LEUKOCYTES} white cells: imprecise"
    return line
