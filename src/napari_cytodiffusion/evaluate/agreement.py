"""Agreement between a user's labels and the model's calls: the report of a "silent mode" pilot.

In a silent-mode pilot the model classifies every cell but nobody acts on it; experts label the
same cells as usual. The report says how often and where the two agree (per class sensitivity
and specificity of the model against the expert, Cohen's kappa), and what share of cells the
model flagged for review (and how its agreement differs between flagged and unflagged cells).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


def cohens_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa of a square confusion matrix (rows: rater A, columns: rater B)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    po = np.trace(cm) / n
    pe = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / n**2
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0


def agreement_report(
    table,
    user_column: str = "corrected_class",
    model_column: str = "class",
    flagged_column: str = "flagged",
) -> dict[str, Any]:
    """Per-class sensitivity/specificity, Cohen's kappa and flagged share.

    Parameters
    ----------
    table
        pandas DataFrame with one row per cell: the model's call, the user's label (rows
        without one are ignored) and optionally the model's ``flagged`` column.
    """
    for col in (user_column, model_column):
        if col not in table.columns:
            raise InputError(
                f"cells table has no {col!r} column (columns: {', '.join(map(str, table.columns))})"
            )
    user = table[user_column].fillna("").astype(str).str.strip()
    rows = table[user != ""]
    if rows.empty:
        raise InputError(f"no cell has a user label in column {user_column!r}")
    u = rows[user_column].astype(str).str.strip().to_numpy()
    m = rows[model_column].astype(str).str.strip().to_numpy()
    classes = sorted(set(u) | set(m), key=str.lower)
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, ([idx[v] for v in u], [idx[v] for v in m]), 1)
    n = int(cm.sum())
    per_class = {}
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        fn = int(cm[i].sum() - tp)
        fp = int(cm[:, i].sum() - tp)
        tn = n - tp - fn - fp
        per_class[c] = {
            "n_user": tp + fn,
            "n_model": tp + fp,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "ppv": tp / (tp + fp) if tp + fp else None,
        }
    agree = u == m
    report: dict[str, Any] = {
        "n": n,
        "classes": classes,
        "agreement": float(agree.mean()),
        "cohens_kappa": cohens_kappa(cm),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows: user label, columns: model call",
        "flagged_share": None,
    }
    if flagged_column in rows.columns:
        flagged = rows[flagged_column].astype(str).str.lower().isin(["true", "1"]).to_numpy()
        report["flagged_share"] = float(flagged.mean())
        report["agreement_flagged"] = float(agree[flagged].mean()) if flagged.any() else None
        report["agreement_not_flagged"] = float(agree[~flagged].mean()) if (~flagged).any() else None
    return report


def agreement_png(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Confusion matrix (user × model) beside per-class sensitivity and specificity bars."""
    from ..io.atomic import write_with
    from .plots import _figure

    plt = _figure()
    classes = report["classes"]
    cm = np.asarray(report["confusion_matrix"])
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(2.5 + 1.3 * k, 1.2 + 0.55 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("model")
    ax.set_ylabel("user")
    ax.set_title(f"agreement {report['agreement']:.1%}, kappa {report['cohens_kappa']:.2f}")
    sens = [report["per_class"][c]["sensitivity"] for c in classes]
    spec = [report["per_class"][c]["specificity"] for c in classes]
    y = np.arange(k)
    bx.barh(y - 0.2, [np.nan if v is None else v for v in sens], height=0.4, label="sensitivity")
    bx.barh(y + 0.2, [np.nan if v is None else v for v in spec], height=0.4, label="specificity")
    bx.set_yticks(y, classes)
    bx.invert_yaxis()
    bx.set_xlim(0, 1)
    flagged = report.get("flagged_share")
    bx.set_title("per class" + (f" — {flagged:.0%} flagged" if flagged is not None else ""))
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out
