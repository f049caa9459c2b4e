"""Evaluation figures (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.atomic import write_with


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def confusion_png(
    cm: np.ndarray, classes: list[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> Path:
    plt = _figure()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    out = write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out


def reliability_png(
    confidence: np.ndarray,
    correct: np.ndarray,
    path: str | os.PathLike,
    bins: int = 10,
    label: str = "max probability",
) -> Path:
    plt = _figure()
    edges = np.linspace(0, 1, bins + 1)
    mids, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (confidence >= lo) & (confidence <= hi if hi == 1 else confidence < hi)
        if sel.any():
            mids.append(confidence[sel].mean())
            accs.append(correct[sel].mean())
            counts.append(sel.sum())
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(mids, accs, "o-", label=label)
    for m, a, c in zip(mids, accs, counts, strict=True):
        ax.annotate(str(c), (m, a), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability diagram")
    fig.tight_layout()
    out = write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out


def differential_png(diff: dict, path: str | os.PathLike, title: str = "White-cell differential") -> Path:
    """Bars of each white-cell class's share with its 95 % interval (a :func:`~napari_cytodiffusion.differential.differential`)."""
    from ..differential import percent_text

    plt = _figure()
    classes = [c for c in diff["percent"] if diff["percent"][c] is not None]
    pct = np.array([diff["percent"][c] for c in classes], dtype=float)
    lo = np.array([diff["ci95"][c][0] for c in classes], dtype=float)
    hi = np.array([diff["ci95"][c][1] for c in classes], dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 0.9 + 0.45 * max(len(classes), 1)))
    y = np.arange(len(classes))[::-1]
    ax.barh(y, pct, color="#7a9cc6")
    ax.errorbar(pct, y, xerr=[pct - lo, hi - pct], fmt="none", ecolor="black", capsize=3, lw=1)
    for yi, p, h in zip(y, pct, hi, strict=True):
        ax.text(min(h + 1.5, 101), yi, f"{percent_text(p)}%", va="center", fontsize=8)
    ax.set_yticks(y, classes)
    ax.set_xlim(0, 108)
    ax.set_xlabel("% of white cells (bars: 95% interval, counting error only)")
    n = diff["leukocytes"]
    sub = f"{n} white cells" + (" — fewer than 100: imprecise" if diff.get("imprecise") else "")
    per100 = [
        f"{c} {percent_text(v['value'])} per 100 white cells"
        for c, v in diff.get("per_100_leukocytes", {}).items()
        if v["count"]
    ]
    if per100:
        sub += "; " + ", ".join(per100)
    ax.set_title(f"{title}\n{sub}", fontsize=10)
    fig.tight_layout()
    out = write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out
