"""Turning diffusion errors into calibrated probabilities, P(correct) and an anomaly score.

All constants are fitted on a calibration set the diffusion model never saw and stored in
the model metadata (``calibration``), so every user of a model folder gets the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .engine import ErrorResult, class_evidence


def timestep_statistics(
    errors: np.ndarray, labels: np.ndarray, timesteps: list[int], keep: int | None = None
) -> dict[str, Any]:
    """Per-timestep signal and noise of the paired error gap (wrong class − true class).

    Parameters
    ----------
    errors
        Full-grid errors (N, C, K).
    labels
        True class of each cell.
    timesteps
        The K timesteps.
    keep
        Keep only this many timesteps, the most informative.

    Returns
    -------
    dict
        ``timesteps`` ordered most informative first, their ``weights`` (mu/sigma^2),
        ``scales`` (sigma) and ``snr`` (mu/sigma).
    """
    n, c, k = errors.shape
    true = errors[np.arange(n), labels]  # (N, K)
    diff = errors - true[:, None, :]
    wrong = np.ones((n, c), bool)
    wrong[np.arange(n), labels] = False
    d = diff[wrong]  # (N*(C-1), K)
    mu = d.mean(axis=0)
    sigma = d.std(axis=0) + 1e-12
    snr = mu / sigma
    order = np.argsort(-snr)
    if keep is not None:
        order = order[: int(keep)]
    return {
        "timesteps": [int(timesteps[i]) for i in order],
        "weights": [float(max(mu[i], 0.0) / sigma[i] ** 2) for i in order],
        "scales": [float(sigma[i]) for i in order],
        "snr": [float(snr[i]) for i in order],
    }


def softmax_neg(evidence: np.ndarray, temperature: float) -> np.ndarray:
    z = -evidence / max(float(temperature), 1e-12)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(evidence: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of the true class."""

    def nll(t: float) -> float:
        p = softmax_neg(evidence, t)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))

    scale = float(np.median(evidence[evidence > 0])) if (evidence > 0).any() else 1.0
    grid = scale * np.logspace(-3, 2, 121)
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    lo, hi = best / 1.2, best * 1.2
    for _ in range(40):  # golden-section refinement in log space
        a, b = (
            np.exp(np.log(lo) + 0.382 * (np.log(hi) - np.log(lo))),
            np.exp(np.log(lo) + 0.618 * (np.log(hi) - np.log(lo))),
        )
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.sqrt(lo * hi))


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float = 1e-3,
    iters: int = 100,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Logistic regression by Newton's method; returns [bias, coef...].

    The penalty ``l2 / 2 * |beta - prior|^2`` pulls the fit towards ``prior`` (zeros when not
    given): with few cells the prior dominates, with many the data does (a Gaussian prior, MAP).
    """
    xb = np.hstack([np.ones((len(x), 1)), x])
    beta0 = np.zeros(xb.shape[1]) if prior is None else np.asarray(prior, float)
    beta = beta0.copy()
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xb @ beta, -30, 30)))
        g = xb.T @ (p - y) + l2 * (beta - beta0)
        h = (xb * (p * (1 - p))[:, None]).T @ xb + l2 * np.eye(len(beta))
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


#: P(correct) = the (temperature-scaled) top probability, in the coefficients of ``pcorrect_features``
PCORRECT_IDENTITY = np.array([0.0, 1.0, 0.0, 0.0])


def pcorrect_features(probs: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    srt = np.sort(probs, axis=1)
    pmax = np.clip(srt[:, -1], 1e-9, 1 - 1e-9)
    margin = np.clip(srt[:, -1] - srt[:, -2], 1e-9, 1.0)
    return np.stack([np.log(pmax / (1 - pmax)), np.log(margin), np.clip(anomaly, -10, 50)], axis=1)


def anomaly_scores(
    result: ErrorResult, winner: np.ndarray, reference: dict[str, Any], ref_timesteps: list[int]
) -> np.ndarray:
    """Legacy score (metadata before "profile"): mean z of the winning class's errors vs its calibration cells."""
    mu, sd = np.asarray(reference["mean"]), np.asarray(reference["std"])
    col = {t: i for i, t in enumerate(ref_timesteps)}
    idx = np.array([col.get(int(t), -1) for t in result.unit_timesteps])
    n = len(winner)
    e = result.errors[np.arange(n), winner]  # (N, U)
    valid = idx >= 0
    z = (e[:, valid] - mu[winner][:, idx[valid]]) / sd[winner][:, idx[valid]]
    return np.nanmean(z, axis=1) if z.shape[1] else np.zeros(n)


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error with equal-width bins."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        if sel.any():
            total += sel.mean() * abs(confidence[sel].mean() - correct[sel].mean())
    return float(total)


def score_anomaly(
    result: ErrorResult,
    winner: np.ndarray,
    evidence: np.ndarray,
    anomaly: dict[str, Any],
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Anomaly score with the model's calibrated method ("profile", or the older "z_winner").

    ``sizes``: the cells' sizes in red-cell diameters where known (smear cells), for the profile's
    size-bound references (:func:`.anomaly.profile_scores`).
    """
    if anomaly.get("method") == "profile":
        from .anomaly import profile_features, profile_scores

        feats = profile_features(
            result.errors,
            result.unit_timesteps,
            result.unit_scales,
            winner,
            anomaly["unit_reference"],
            gaps=anomaly.get("gaps", "runner_up"),
            null_errors=result.null_errors,
        )
        return profile_scores(feats, winner, anomaly["profile"], sizes)
    return anomaly_scores(result, winner, anomaly["reference"], anomaly["reference_timesteps"])


def fit_calibration(
    result: ErrorResult,
    labels: np.ndarray,
    n_classes: int,
    specificity: float = 0.96,
    flag_below: float = 0.9,
    prior_strength: float = 0.0,
    gaps: str | None = None,
) -> dict[str, Any]:
    """Fit temperature, P(correct), the anomaly profile and its threshold on a calibration run.

    ``gaps`` chooses the anomaly profile's gap features (``"runner_up"``, ``"classes"`` or
    ``"null"``, see :mod:`.anomaly`); by default the null gap when ``result`` holds the null
    label's errors (``EngineConfig.null``), else every-class gaps when the calibration set is large
    enough.

    ``prior_strength`` > 0 shrinks the P(correct) regression towards "P(correct) = top
    probability after temperature scaling" (:data:`PCORRECT_IDENTITY`); worth it when there are
    few calibration cells (a few dozen, with a handful of errors), where an unpenalised fit
    separates the errors and becomes over-confident.
    """
    from .anomaly import BANDS, choose_gaps, fit_profile, profile_features, profile_scores, unit_reference

    winner, evidence = class_evidence(result)
    temperature = fit_temperature(evidence, labels)
    probs = softmax_neg(evidence, temperature)
    ref = unit_reference(result.errors, labels, result.unit_timesteps)
    if gaps is None:
        gaps = "null" if result.null_errors is not None else choose_gaps(len(labels), n_classes)
    feats = profile_features(
        result.errors, result.unit_timesteps, result.unit_scales, winner, ref, gaps=gaps,
        null_errors=result.null_errors,
    )  # fmt: skip
    fitted = fit_profile(feats, winner, n_classes)
    anomaly = profile_scores(feats, winner, fitted)
    correct = (winner == labels).astype(float)
    feats_pc = pcorrect_features(probs, np.nan_to_num(anomaly))
    if prior_strength > 0:
        beta = fit_logistic(feats_pc, correct, l2=prior_strength, prior=PCORRECT_IDENTITY)
    else:
        beta = fit_logistic(feats_pc, correct)
    return {
        "temperature": temperature,
        "p_correct": {"features": ["logit(p_max)", "log(margin)", "anomaly"], "coef": beta.tolist()},
        "anomaly": {
            "method": "profile",
            "description": "Mahalanobis distance of the error profile to calibration cells of the predicted class",
            "bands": BANDS,
            "gaps": gaps,
            "unit_reference": ref,
            "profile": fitted,
            "threshold": float(np.nanquantile(anomaly, specificity)),
            "specificity": specificity,
        },
        "flag_below_p_correct": flag_below,
        "n_calibration_cells": len(labels),
        "p_correct_prior_strength": prior_strength,
        "calibration_accuracy": float(correct.mean()),
    }


def apply_pcorrect(probs: np.ndarray, anomaly: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    beta = np.asarray(calibration["p_correct"]["coef"])
    x = pcorrect_features(probs, anomaly)
    return 1 / (1 + np.exp(-np.clip(beta[0] + x @ beta[1:], -30, 30)))


def error_run(
    model,
    crops: np.ndarray,
    speed: str = "balanced",
    seed: int = 0,
    should_stop=None,
    null: bool | None = None,
):
    """Diffusion errors of ``crops`` with the model's engine settings (for fitting calibrations).

    ``null``: evaluate the null label at every unit (``EngineConfig.null``); by default when the
    anomaly profile the preset now has needs it.
    """
    from ..crops import to_model_tensor
    from .classifier import engine_config
    from .engine import crop_ids, diffusion_errors, merge_results

    cfg = engine_config(model, speed, seed=seed, null=null)  # None: as the preset's profile needs
    ac = model.alphas_cumprod()
    parts = []
    for s in range(0, len(crops), 64):
        x0 = to_model_tensor(crops[s : s + 64]).to(model.device)
        parts.append(
            diffusion_errors(
                model.inference_unet(), ac, x0, model.metadata.n_classes, cfg,
                cell_ids=crop_ids(crops[s : s + 64]), should_stop=should_stop,
            )
        )  # fmt: skip
    return merge_results(parts, model.metadata.n_classes)


#: calibration sets smaller than this get a P(correct) fit shrunk towards the top probability
FEW_CALIBRATION_CELLS = 200


def default_prior_strength(n_cells: int) -> float:
    """Prior strength for :func:`fit_calibration` by the size of the calibration set."""
    return 30.0 if n_cells < FEW_CALIBRATION_CELLS else 0.0


def recalibrate(
    model,
    crops: np.ndarray,
    labels: np.ndarray,
    should_stop=None,
    speed: str = "balanced",
    seed: int = 0,
    null: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Refit temperature, P(correct) and the anomaly reference/threshold on labelled cells.

    The engine settings (timesteps, weights, paired-test threshold) are kept from the model's
    calibration; everything fitted from errors is refitted on ``crops``. With ``null`` true the
    anomaly profile is fitted on the null label's gap (``anomaly.profile_features(gaps="null")``),
    false on the class gaps; by default as the preset's profile is now. Returns the new
    ``calibration`` block and a small summary of the calibration cells (for ``validation``).
    """
    res = error_run(model, crops, speed=speed, seed=seed, should_stop=should_stop, null=null)
    return recalibrate_from_errors(model, res, labels, speed=speed)


def recalibrate_from_errors(
    model, res: ErrorResult, labels: np.ndarray, speed: str = "balanced"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`recalibrate` on errors computed before (``res``: the ``speed`` preset's run of the cells)."""
    labels = np.asarray(labels, dtype=np.int64)
    cal = model.metadata.calibration or {}
    old = cal.get("anomaly", {})
    new = fit_calibration(
        res,
        labels,
        model.metadata.n_classes,
        specificity=float(old.get("specificity", 0.96)),
        flag_below=float(cal.get("flag_below_p_correct", 0.9)),
        prior_strength=default_prior_strength(len(labels)),
    )
    new["engine"] = dict(cal.get("engine", {}))
    winner, evidence = class_evidence(res)
    probs = softmax_neg(evidence, new["temperature"])
    summary = {
        "calibration_cells": int(len(labels)),
        "calibration_accuracy": float((winner == labels).mean()),
        "calibration_ece_after": ece(probs.max(axis=1), (winner == labels).astype(float)),
        "speed": speed,
    }
    return new, summary
