"""Classification and anomaly-detection metrics (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..classify.calibration import ece


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, p_correct: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, ECE, selective accuracy, per-class recall."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    c = len(classes)
    cm = confusion(y_true, y_pred, c)
    present = cm.sum(axis=1) > 0
    recall = np.divide(np.diag(cm), cm.sum(axis=1), out=np.zeros(c), where=cm.sum(axis=1) > 0)
    precision = np.divide(np.diag(cm), cm.sum(axis=0), out=np.zeros(c), where=cm.sum(axis=0) > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0
    )
    correct = y_true == y_pred
    sel = p_correct >= 0.95
    return {
        "n": len(y_true),
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "ece": ece(probs.max(axis=1), correct) if len(correct) else float("nan"),
        "ece_p_correct": ece(p_correct, correct) if len(correct) else float("nan"),
        "selective_accuracy_p_correct_0.95": float(correct[sel].mean()) if sel.any() else float("nan"),
        "coverage_p_correct_0.95": float(sel.mean()) if len(sel) else float("nan"),
        "per_class_recall": {classes[i]: float(recall[i]) for i in range(c) if present[i]},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def flag_shares(correct: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """How many wrong calls the flag catches and how many right ones it costs a reviewer:
    ``flagged_share_of_wrong_calls`` and ``flagged_share_of_right_calls`` (NaN where there are none)."""
    correct, flagged = np.asarray(correct, dtype=bool), np.asarray(flagged, dtype=bool)
    if correct.shape != flagged.shape:
        raise ValueError(f"{correct.shape[0]} calls but {flagged.shape[0]} flags")
    return {
        "flagged_share_of_wrong_calls": float(flagged[~correct].mean()) if (~correct).any() else float("nan"),
        "flagged_share_of_right_calls": float(flagged[correct].mean()) if correct.any() else float("nan"),
    }


def auroc(scores_neg: np.ndarray, scores_pos: np.ndarray) -> float:
    """Area under the ROC curve (positives should score higher), ties counted half."""
    neg, pos = np.asarray(scores_neg, float), np.asarray(scores_pos, float)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    allv = np.concatenate([neg, pos])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rpos = ranks[len(neg) :].sum()
    return float((rpos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def sensitivity_at_specificity(
    scores_neg: np.ndarray, scores_pos: np.ndarray, specificity: float = 0.96
) -> float:
    thr = np.quantile(np.asarray(scores_neg, float), specificity)
    return float((np.asarray(scores_pos, float) > thr).mean()) if len(scores_pos) else float("nan")
