"""Active learning: which unlabelled cells would a label help most?

A label is most useful where the model is least sure (low calibrated P(correct)) or where the
cell is unlike anything it was trained on (high anomaly score). Both are turned into ranks
among the candidate cells and a cell's priority is the larger of the two, so the queue
alternates between the most uncertain and the most abnormal cells.
"""

from __future__ import annotations

import numpy as np


def _rank01(v: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share the mean rank); NaN ranks lowest."""
    v = np.where(np.isfinite(v), v, -np.inf)
    if len(v) <= 1:
        return np.ones(len(v))
    order = np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(np.float64)
    return order / (len(v) - 1)


def labelling_priority(p_correct: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """Priority in [0, 1] for each cell: max(rank of uncertainty, rank of anomaly)."""
    p_correct = np.asarray(p_correct, dtype=np.float64)
    anomaly = np.asarray(anomaly, dtype=np.float64)
    return np.maximum(_rank01(1.0 - p_correct), _rank01(anomaly))


def labelling_queue(table) -> np.ndarray:
    """Row positions of classified cells without a user label, most useful to label first.

    ``table`` is a cells table with ``classified``, ``p_correct`` and ``anomaly`` columns and
    optionally ``corrected_class`` (cells that already have one are skipped).
    """
    n = len(table)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cand = table["classified"].to_numpy(bool).copy() if "classified" in table else np.ones(n, bool)
    if "corrected_class" in table:
        cand &= table["corrected_class"].fillna("").astype(str).str.strip().to_numpy() == ""
    rows = np.flatnonzero(cand)
    if rows.size == 0:
        return rows.astype(np.int64)
    pri = labelling_priority(table["p_correct"].to_numpy(float)[rows], table["anomaly"].to_numpy(float)[rows])
    # most useful first; ties broken by lower P(correct)
    order = np.lexsort((table["p_correct"].to_numpy(float)[rows], -pri))
    return rows[order].astype(np.int64)
