"""Anomaly score: how unlike the calibration cells of its class is a cell's *error profile*?

A single number such as "the winning class's error" confuses simple with typical: a small,
plain cell of an unseen kind is denoised *better* than a typical cell, so one-sided scores
miss it (seen here: AUROC 0.28 for erythroblasts held out of training). Instead each cell gets
a short profile:

- the winning class's log error in four noise-level bands (each unit normalised by the mean
  log error of calibration cells at that timestep, so partial bands stay comparable);
- the log gap to the runner-up class, in units of each timestep's paired-difference spread
  (so a run that evaluated fewer timesteps gives comparable values) — or, with enough
  calibration cells, the log gap to *every* other class (``gaps="classes"``): a cell of an
  unseen kind is often explained by its closest class about as well as a typical member, but
  its pattern of distances to the other classes differs. Measured with a model trained without
  erythroblasts (``benchmarks/anomaly_features.py``): held-out erythroblasts that it calls
  lymphocytes are denoised as well as real lymphocytes (band features within 0.3 SD) but sit
  about 2 SD closer to the platelet and neutrophil classes; over 65 erythroblasts vs 455
  normal cells (adaptive runs) AUROC 0.92 with every-class gaps, 0.84 with the runner-up gap;
- or (``gaps="null"``) no class gaps, but the log gap between the *null* (unconditional) label's
  error and the winner's: how much the class label helps explain the cell. A cell that its best
  class explains no better than "some blood cell" belongs to none of them. The class gaps rest on
  classes the paired test dropped after two units, or that nearly tie with the winner, so they
  are largely the noise draw; the null gap rests on every unit. Replayed on error dumps of the
  shipped model (``benchmarks/anomaly_steadiness.py --null``): a class taken out of the label set
  is found with mean AUROC 0.95 (every-class gaps 0.88), infected red cells as well or better,
  and the flags of normal cells are about twice as reproducible between noise draws; it costs
  one call per unit (``EngineConfig.null``). A network that never learnt the class does not bear
  the first figure out: erythroblasts against a variant trained without them, 0.856 with the null
  gap and 0.874 with every-class gaps (adaptive); the null gap's strength is cells unlike every
  blood cell the network saw (infected red cells 0.995 on the same variant).

Calibration cells give, per predicted class, the mean and covariance of this profile (blended
with the pooled covariance, shrunk towards its diagonal); the score is the Mahalanobis distance
per available dimension. It is two-sided: too easy, too hard, or an unusual shape all count.

A class whose cells come in a form its calibration cells lack gets a second reference
(:func:`fit_component`): the single platelets of a smear, beside PBC's platelet images.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: Noise-level bands (timestep edges) of the profile.
BANDS = [0, 300, 500, 700, 1001]


def band_index(timesteps) -> np.ndarray:
    """Noise band of each timestep (``BANDS``); -1 or ``len(BANDS) - 1`` outside them."""
    return np.searchsorted(BANDS, np.asarray(timesteps), side="right") - 1


#: Gap features: the runner-up class only, every other class, or the null label.
GAP_KINDS = ("runner_up", "classes", "null")


def needs_null(anomaly: dict[str, Any] | None) -> bool:
    """Whether an anomaly block's profile needs the null label's errors (``EngineConfig.null``)."""
    return bool(anomaly) and anomaly.get("method") == "profile" and anomaly.get("gaps") == "null"


def unit_reference(errors: np.ndarray, labels: np.ndarray, timesteps: np.ndarray) -> dict[str, Any]:
    """Mean log error of the true class per timestep over calibration cells."""
    true = errors[np.arange(len(labels)), labels]  # (N, U)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_log = np.nanmean(np.log(np.clip(true, 1e-12, None)), axis=0)
    return {"timesteps": [int(t) for t in timesteps], "mean_log": [float(v) for v in mean_log]}


def profile_features(
    errors: np.ndarray,
    unit_timesteps: np.ndarray,
    unit_scales: np.ndarray,
    winner: np.ndarray,
    reference: dict[str, Any],
    gaps: str = "runner_up",
    null_errors: np.ndarray | None = None,
) -> np.ndarray:
    """Profile features; NaN where a band has no evaluated unit.

    Returns (N, len(BANDS)) with ``gaps="runner_up"`` (four bands, then the runner-up gap) or
    ``gaps="null"`` (four bands, then the null label's gap, from ``null_errors`` (N, U)), and
    (N, len(BANDS) - 2 + C) with ``gaps="classes"`` (four bands, then the gap to each other
    class in class order, the winner left out).
    """
    if gaps not in GAP_KINDS:
        raise ValueError(f"unknown gap features {gaps!r}")
    if gaps == "null" and null_errors is None:
        raise ValueError("null-gap features need the null label's errors (EngineConfig.null)")
    n = len(winner)
    ref = dict(zip(reference["timesteps"], reference["mean_log"], strict=True))
    base = np.array([ref.get(int(t), np.nan) for t in unit_timesteps])
    e = errors[np.arange(n), winner]  # (N, U)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.log(np.clip(e, 1e-12, None)) - base[None, :]
    feats = np.full((n, len(BANDS)), np.nan)
    band = band_index(unit_timesteps)
    for b in range(len(BANDS) - 1):
        cols = (band == b) & np.isfinite(base)
        if cols.any():
            block = norm[:, cols]
            ok = np.isfinite(block).any(axis=1)
            feats[ok, b] = np.nanmean(block[ok], axis=1)
    c = errors.shape[1]
    if gaps == "null":
        scales = np.asarray(unit_scales, dtype=np.float64)
        z = (np.asarray(null_errors, dtype=np.float64) - e) / scales[None, :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a cell with no unit under both labels
            gap = np.nanmean(z, axis=1)
        feats[:, -1] = np.log(np.clip(gap, 1e-2, None))  # NaN stays NaN: that dimension is left out
        return feats
    if c > 1:
        z = (errors - e[:, None, :]) / np.asarray(unit_scales, dtype=np.float64)[None, None, :]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # classes never evaluated: all-NaN rows
            zbar = np.nanmean(z, axis=2)
        if gaps == "classes":
            others = np.ones((n, c), dtype=bool)
            others[np.arange(n), winner] = False
            g = np.where(np.isfinite(zbar), zbar, 10.0)[others].reshape(n, c - 1)
            return np.concatenate([feats[:, :-1], np.log(np.clip(g, 1e-2, None))], axis=1)
        zbar[np.arange(n), winner] = np.inf
        gap = np.nanmin(np.where(np.isfinite(zbar), zbar, np.inf), axis=1)
        gap = np.where(np.isfinite(gap), gap, 10.0)
    else:
        gap = np.ones(n)
    feats[:, -1] = np.log(np.clip(gap, 1e-3, None))
    return feats


def choose_gaps(n_cells: int, n_classes: int) -> str:
    """Gap features a calibration set of this size supports (about 15 cells per feature)."""
    dims = len(BANDS) - 2 + n_classes
    return "classes" if n_classes >= 3 and n_cells >= 15 * dims else "runner_up"


def fit_profile(
    features: np.ndarray,
    winner: np.ndarray,
    n_classes: int,
    shrink: float = 0.1,
    min_cells: int = 12,
    min_coverage: float = 0.5,
) -> dict[str, Any]:
    """Per-class mean and covariance of the profile (classes with few cells use the pooled ones).

    Only the dimensions that at least ``min_coverage`` of the cells have are fitted (listed as
    ``dims``): a preset that never reaches a noise band (``fast`` stops short of the lowest and
    highest) leaves that band empty for every cell, and is scored on the bands it sees.
    """
    d_all = features.shape[1]
    finite = np.isfinite(features)
    dims = np.flatnonzero(finite.mean(axis=0) >= min_coverage) if len(features) else np.arange(0)
    if len(dims) == 0:
        raise ValueError("no profile dimension is present in enough calibration cells")
    ok = finite[:, dims].all(axis=1)
    f, w = features[ok][:, dims], winner[ok]
    d = len(dims)
    if len(f) < d + 2:
        raise ValueError(f"need at least {d + 2} calibration cells with complete profiles, got {len(f)}")
    pooled_mean = f.mean(axis=0)
    resid = np.concatenate([f[w == c] - f[w == c].mean(axis=0) for c in np.unique(w)])
    pooled = np.cov(resid.T) + 1e-6 * np.eye(d)
    pooled = (1 - shrink) * pooled + shrink * np.diag(np.diag(pooled))
    means, covs = np.zeros((n_classes, d_all)), np.tile(np.eye(d_all), (n_classes, 1, 1))
    grid = np.ix_(dims, dims)
    for c in range(n_classes):
        fc = f[w == c]
        if len(fc) >= min_cells:
            cc = np.cov((fc - fc.mean(axis=0)).T) + 1e-6 * np.eye(d)
            means[c, dims] = fc.mean(axis=0)
            covs[c][grid] = 0.5 * cc + 0.5 * pooled
        else:
            means[c, dims] = pooled_mean
            covs[c][grid] = pooled
    out: dict[str, Any] = {"means": means.tolist(), "covs": covs.tolist()}
    if d < d_all:
        out["dims"] = [int(i) for i in dims]
    return out


def band_dims() -> list[int]:
    """Profile dimensions of the noise bands (how well the winning class explains the cell)."""
    return list(range(len(BANDS) - 1))


def fit_component(
    features: np.ndarray,
    fitted: dict[str, Any],
    cls: int,
    name: str,
    source: str,
    threshold: float,
    specificity: float,
    dims: list[int] | None = None,
    max_size: float | None = None,
    shrink: float = 0.1,
) -> dict[str, Any]:
    """A second reference for the cells of one class that come in another form.

    The shipped models' platelet references are PBC's platelet *images*: large platelets and
    clumps, centred. The single platelets around the cells of a smear (a third of a red cell
    across, off-centre in their crop) are a form of the same class that those images hardly show,
    and their error profiles sit far from it: 81-86 % of them scored anomalous on PBC's own images.

    ``features`` are the profiles of such cells (all called ``cls``). The component is their mean
    and covariance (shrunk towards its diagonal) on ``dims`` (default: the profile's dimensions;
    for smear platelets :func:`band_dims`, since a platelet-sized cell is called by its size and
    its gaps to the other classes are small and erratic: a few pixels of the crop differ). Its
    distances are scaled so that ``1 - specificity`` of these cells exceed ``threshold``, as for
    the calibration cells of the main profile; a cell is then scored against the nearer of its
    class's references (:func:`profile_scores`).

    With ``max_size`` the component applies only to cells whose size (in red-cell diameters,
    :mod:`.size`) is known and at most that: for smear platelets, the cells too small to be any
    other class. A platelet-like reference must not absorb what is *called* platelet but is not
    one: 64 % of P. falciparum-infected red cells (single-cell images, no size) are called
    platelet, and a band-only reference for every such call took the anomaly AUROC from 0.98 to 0.94.
    """
    d_all = features.shape[1]
    fitted_dims = [int(i) for i in fitted.get("dims", range(d_all))]
    dims = fitted_dims if dims is None else [int(i) for i in dims if int(i) in fitted_dims]
    f = features[:, dims]
    f = f[np.isfinite(f).all(axis=1)]
    need = 2 * len(dims) + 2
    if len(f) < need:
        raise ValueError(f"need at least {need} cells with complete profiles for a component, got {len(f)}")
    cc = np.cov((f - f.mean(axis=0)).T).reshape(len(dims), len(dims)) + 1e-6 * np.eye(len(dims))
    cc = (1 - shrink) * cc + shrink * np.diag(np.diag(cc))
    mean, cov = np.zeros(d_all), np.eye(d_all)
    mean[dims] = f.mean(axis=0)
    cov[np.ix_(dims, dims)] = cc
    comp: dict[str, Any] = {"class": int(cls), "name": name, "source": source, "n": int(len(f)), "dims": dims,
                            "mean": mean.tolist(), "cov": cov.tolist(), "scale": 1.0}  # fmt: skip
    if max_size is not None:
        comp["max_size"] = float(max_size)
    own = _component_distances(features, np.full(len(features), int(cls)), comp, len(fitted["means"]))
    own = own[np.isfinite(own)]
    comp["scale"] = float(np.quantile(own, specificity) / threshold)
    return comp


def profile_scores(
    features: np.ndarray, winner: np.ndarray, fitted: dict[str, Any], sizes: np.ndarray | None = None
) -> np.ndarray:
    """Mahalanobis distance per available dimension (sqrt(d² / k)) to the predicted class.

    Dimensions the profile was not fitted on (``fitted["dims"]``) are ignored. A class with
    extra references (``fitted["components"]``, :func:`fit_component`) scores each cell against
    the nearest of them that applies to it: a component with a ``max_size`` applies only to cells
    whose ``sizes`` (red-cell diameters; NaN or ``None`` = unknown) are at most that.
    """
    out = _distances(
        features, winner, np.asarray(fitted["means"]), np.asarray(fitted["covs"]), fitted.get("dims")
    )
    for comp in fitted.get("components", []):
        rows = winner == int(comp["class"])
        if "max_size" in comp:
            if sizes is None:
                continue
            with np.errstate(invalid="ignore"):
                rows &= np.asarray(sizes, dtype=float) <= float(comp["max_size"])
        if rows.any():
            alt = _component_distances(features[rows], winner[rows], comp, len(fitted["means"]))
            out[rows] = np.fmin(out[rows], alt)
    return out


def _component_distances(features: np.ndarray, winner: np.ndarray, comp: dict[str, Any], n_classes: int):
    c, d_all = int(comp["class"]), len(comp["mean"])
    means, covs = np.zeros((n_classes, d_all)), np.tile(np.eye(d_all), (n_classes, 1, 1))
    means[c], covs[c] = comp["mean"], comp["cov"]
    return _distances(features, winner, means, covs, comp.get("dims")) / float(comp.get("scale", 1.0))


def _distances(
    features: np.ndarray, winner: np.ndarray, means: np.ndarray, covs: np.ndarray, dims: list[int] | None
) -> np.ndarray:
    out = np.full(len(winner), np.nan)
    avail = np.isfinite(features)
    if dims is not None:
        keep = np.zeros(features.shape[1], dtype=bool)
        keep[np.asarray(dims, dtype=int)] = True
        avail &= keep[None, :]
    for pattern in {tuple(r) for r in avail}:
        use = np.array(pattern, dtype=bool)
        if not use.any():
            continue
        rows = np.flatnonzero((avail == use).all(axis=1))
        for c in np.unique(winner[rows]):
            sel = rows[winner[rows] == c]
            prec = np.linalg.inv(covs[c][np.ix_(use, use)])
            diff = features[np.ix_(sel, np.flatnonzero(use))] - means[c][use]
            out[sel] = np.sqrt(np.einsum("ij,jk,ik->i", diff, prec, diff) / use.sum())
    return out


def binomial_tail(k: int, n: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(n, q), summed in log space (no scipy needed)."""
    from math import exp, lgamma, log, log1p

    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lq, lr = log(q), log1p(-q)
    terms = [
        lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) + i * lq + (n - i) * lr for i in range(k, n + 1)
    ]
    top = max(terms)
    return float(min(1.0, exp(top) * sum(exp(t - top) for t in terms)))


#: A set of cells is called shifted when this many anomalous cells would be this unlikely.
SHIFT_P_VALUE = 1e-3


def shift_test(n_anomalous: int, n: int, expected_fraction: float) -> dict[str, Any]:
    """One-sided binomial test: are ``n_anomalous`` of ``n`` cells more than ``expected_fraction`` predicts?

    Returns ``n``, ``n_anomalous``, ``expected_fraction``, ``p_value`` and ``shifted``
    (p < :data:`SHIFT_P_VALUE`).
    """
    n, k, q = int(n), int(n_anomalous), float(expected_fraction)
    p = binomial_tail(k, n, q) if n else 1.0
    return {
        "n": n,
        "n_anomalous": k,
        "expected_fraction": q,
        "p_value": p,
        "shifted": bool(n and p < SHIFT_P_VALUE),
    }


def domain_check(anomaly: np.ndarray, threshold: float, specificity: float) -> dict[str, Any]:
    """Do these cells, *as a set*, look unlike the cells the model was calibrated on?

    By construction about ``1 - specificity`` of in-distribution cells score above the anomaly
    threshold. Far more anomalous cells than that, judged by :func:`shift_test`, means the
    image probably comes from another microscope, stain or scanner (or is not a blood smear),
    and the calls deserve less trust than their P(correct) says: on segmentation_WBC dataset 2
    (CellaVision, another lab) the default model is 46 % accurate while claiming a mean
    P(correct) of 0.87.
    """
    a = np.asarray(anomaly, dtype=np.float64)
    a = a[np.isfinite(a)]
    return shift_test(int((a > threshold).sum()), a.size, 1.0 - specificity)


def domain_check_against(anomaly: np.ndarray, reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """:func:`domain_check` against a model's ``calibration["anomaly"]``; ``None`` if it has no threshold."""
    if not reference or "threshold" not in reference:
        return None
    return domain_check(anomaly, float(reference["threshold"]), float(reference.get("specificity", 0.96)))


def shift_warning(check: dict[str, Any]) -> str:
    """The one sentence every front end shows when a set of cells is shifted."""
    return (
        f"{check['n_anomalous']} of {check['n']} cells look unlike the model's training cells "
        f"({check['expected_fraction']:.0%} expected): another microscope or stain? Check the calls by eye, "
        "or adapt the model (napari-cytodiffusion finetune)"
    )
