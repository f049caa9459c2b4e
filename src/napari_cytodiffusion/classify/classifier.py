"""High-level classification of cell crops with a loaded diffusion model.

:func:`iter_classify` is a generator (progress first, result last) so napari workers and the
CLI share the same code; :func:`classify_crops` runs it to completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .anomaly import needs_null
from .calibration import apply_pcorrect, score_anomaly, softmax_neg
from .engine import EngineConfig, class_evidence, crop_ids, diffusion_errors, merge_results

#: Speed/accuracy presets (engine overrides).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"adaptive": True, "units_per_round": 2, "drop_z": 1.5, "max_units": 12},
    "balanced": {"adaptive": True},
    # every timestep also under a 90°-rotated view (48 units), and a stricter paired test: replayed
    # on full-grid int8 errors of 2,707 PBC cells (hold-out and val), z 2.0 keeps the 2-view full
    # grid's call for 99.9 % of them (z 1.5: 99.6 %) at 120 instead of 100 calls per cell; PBC val
    # balanced accuracy 0.967 (z 1.5: 0.962; full grid 0.969); 3 or 4 views were no better
    # (full grid 0.970 / 0.968), see docs/measurements.md
    "accurate": {"adaptive": True, "tta": 2, "drop_z": 2.0},
    "full": {"adaptive": False},
}


@dataclass
class Progress:
    done: int
    total: int
    message: str = ""


@dataclass
class Classification:
    """Per-cell results of the generative classifier."""

    classes: list[str]
    pred: np.ndarray
    probs: np.ndarray
    evidence: np.ndarray
    certainty: np.ndarray
    p_correct: np.ndarray
    anomaly: np.ndarray
    flagged: np.ndarray
    unet_calls: np.ndarray
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    #: the class the errors alone pick, where a prior (``allowed``) made ``pred`` another one
    by_appearance: np.ndarray | None = None
    #: a cell is flagged below this P(correct) ...
    flag_below: float = 0.9
    #: ... or above this anomaly score
    anomaly_threshold: float = float("inf")

    def __len__(self) -> int:
        return len(self.pred)

    @property
    def flag_reasons(self) -> list[str]:
        """Why each cell is flagged, in words (``""`` for a cell that is not)."""
        return [
            flag_reason(bool(u), bool(a))
            for u, a in zip(
                self.p_correct < self.flag_below, self.anomaly > self.anomaly_threshold, strict=True
            )
        ]

    @property
    def pred_names(self) -> list[str]:
        return [self.classes[i] for i in self.pred]

    def to_frame(self):
        """Results as a pandas DataFrame (one row per cell)."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "class": self.pred_names,
                "certainty": self.certainty,
                "p_correct": self.p_correct,
                "anomaly": self.anomaly,
                "flagged": self.flagged,
                "flag_reason": self.flag_reasons,
                "unet_calls": self.unet_calls,
            }
        )
        for j, c in enumerate(self.classes):
            df[f"p_{c}"] = self.probs[:, j]
        return df


#: the words of :func:`flag_reason`, also used by the size check (``pipeline.mark_sizes``)
FLAG_WORDS = {
    "uncertain": "uncertain",
    "anomalous": "unlike the training cells",
    "size": "wrong size for its appearance",
}


def flag_reason(uncertain: bool, anomalous: bool, size: bool = False) -> str:
    """``"uncertain; unlike the training cells"``: the reasons a cell is flagged, or ``""``."""
    on = {"uncertain": uncertain, "anomalous": anomalous, "size": size}
    return "; ".join(FLAG_WORDS[k] for k, v in on.items() if v)


def engine_config(model, speed: str = "balanced", **overrides: Any) -> EngineConfig:
    if speed not in PRESETS:
        raise InputError(f"unknown speed {speed!r}; choose one of {', '.join(PRESETS)}")
    cal = model.metadata.calibration or {}
    merged = dict(PRESETS[speed])
    merged.update({k: v for k, v in overrides.items() if v is not None})
    if "null" not in merged:  # the null label is evaluated when the anomaly profile that will run needs it
        merged["null"] = needs_null(calibration_for(model, speed).get("anomaly"))
    return EngineConfig.from_calibration(cal, **merged)


#: keys of a calibration block fitted on errors (replaced per backend and per speed preset)
FITTED_KEYS = ("temperature", "p_correct", "anomaly", "flag_below_p_correct")


def calibration_for(model, speed: str = "balanced") -> dict[str, Any]:
    """Calibration constants for the network and the speed preset that will run the classifier.

    The int8 UNet's errors differ slightly from float32's, so a model folder may hold constants
    fitted on int8 errors (``extra["int8"]["classifier_calibration"]``); they replace the float32
    ones (temperature, P(correct), anomaly profile) when the int8 backend runs. The engine settings
    (timesteps, weights, test threshold) are shared.

    A preset that evaluates other units than ``balanced`` (``fast`` stops at 12 timesteps,
    ``accurate`` adds a rotated view of each) changes how noisy the errors are, hence the
    probabilities and the anomaly profile: a calibration block may hold ``presets[speed]``
    fitted on that preset's errors (``scripts/calibrate_presets.py``), used when present.
    Without one (e.g. an adapter calibrated on the default preset only) the preset's results
    use the block's main constants.
    """
    from ..model.onnx_backend import backend_name

    cal = dict(model.metadata.calibration or {})
    if cal and backend_name(model) == "onnx-int8":
        int8 = (model.metadata.extra.get("int8") or {}).get("classifier_calibration") or {}
        if int8:  # its presets (if any) belong to it: the float32 ones do not carry over
            cal.pop("presets", None)
            cal.update(int8)
    presets = cal.pop("presets", None) or {}
    if speed in presets:
        cal.update({k: v for k, v in presets[speed].items() if k in FITTED_KEYS})
        cal["calibrated_for_speed"] = speed
    return cal


def iter_classify(
    model,
    crops: np.ndarray,
    speed: str = "balanced",
    seed: int = 0,
    batch_cells: int = 64,
    should_stop: Callable[[], bool] | None = None,
    allowed: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    **engine_overrides: Any,
) -> Iterator[Progress | Classification]:
    """Classify uint8 crops (N, S, S, 3); yields :class:`Progress`, then the :class:`Classification`.

    ``allowed`` (N, C bool), e.g. the classes a smear cell's size permits
    (:mod:`.size`), restricts each cell's call and probabilities to those classes; a cell that
    allows none keeps every class. ``sizes`` (N,) are the cells' sizes in red-cell diameters
    where known, for size-bound anomaly references. See :func:`finish`.
    """
    import torch

    from ..crops import to_model_tensor

    crops = np.asarray(crops)
    size = model.size
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
        raise InputError(f"crops must be uint8 (N, {size}, {size}, 3), got {crops.dtype} {crops.shape}")
    cfg = engine_config(model, speed, seed=seed, **engine_overrides)
    cal = calibration_for(model, speed)
    n, c = len(crops), model.metadata.n_classes
    t0 = time.perf_counter()
    parts = []
    yield Progress(0, n, "classifying")
    ac = model.alphas_cumprod()
    dev = model.device
    if dev.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    for start in range(0, n, batch_cells):
        stop = min(n, start + batch_cells)
        x0 = to_model_tensor(crops[start:stop]).to(dev)
        ids = crop_ids(crops[start:stop])  # a cell's noise is its own, wherever it is in the run
        res = diffusion_errors(model.inference_unet(), ac, x0, c, cfg, cell_ids=ids, should_stop=should_stop)
        parts.append(res)
        yield Progress(stop, n, "classifying")
    res = merge_results(parts, c)
    yield finish(
        res,
        model.metadata.classes,
        cal,
        time.perf_counter() - t0,
        {"speed": speed, "seed": seed, **cfg.__dict__},
        allowed=allowed,
        sizes=sizes,
    )


def flag_limits(cal: dict[str, Any]) -> tuple[float, float]:
    """A calibration's flag limits: a cell is flagged below this P(correct) or above this anomaly score."""
    threshold = float(cal["anomaly"]["threshold"]) if "anomaly" in cal else np.inf
    return float(cal.get("flag_below_p_correct", 0.9)), threshold


def finish(
    res,
    classes: list[str],
    cal: dict[str, Any],
    seconds: float,
    settings: dict[str, Any],
    allowed: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> Classification:
    """Errors → probabilities, certainty, P(correct), anomaly, flags.

    With ``allowed`` (N, C bool; rows with no allowed class are left free) the winner is the
    allowed class with the least evidence against it, evidence is measured against that winner,
    disallowed classes get probability 0, and the anomaly score and P(correct) follow the new
    winner; ``by_appearance`` keeps the unrestricted winner. This is Bayes' rule with a prior that
    is 0 outside the allowed classes and flat inside.
    """
    n, c = res.active.shape
    if n == 0:
        z = np.zeros(0)
        return Classification(
            classes,
            z.astype(int),
            np.zeros((0, c)),
            np.zeros((0, c)),
            z,
            z,
            z,
            z.astype(bool),
            z.astype(int),
            seconds,
            settings,
        )
    winner, evidence = class_evidence(res)
    by_appearance = None
    mask = None
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n, c):
            raise ValueError(f"allowed must be ({n}, {c}), got {allowed.shape}")
        mask = allowed | ~allowed.any(axis=1, keepdims=True)
        by_appearance = winner
        if not mask[np.arange(n), winner].all():
            winner = np.argmin(np.where(mask, evidence, np.inf), axis=1)
            _, evidence = class_evidence(res, winner)
    temperature = float(cal.get("temperature", 1.0))
    probs = softmax_neg(evidence if mask is None else np.where(mask, evidence, np.inf), temperature)
    flag_below, threshold = flag_limits(cal)
    anomaly = score_anomaly(res, winner, evidence, cal["anomaly"], sizes) if "anomaly" in cal else np.zeros(n)
    p_correct = (
        apply_pcorrect(probs, np.nan_to_num(anomaly), cal) if "p_correct" in cal else probs.max(axis=1)
    )
    flagged = (p_correct < flag_below) | (anomaly > threshold)
    return Classification(
        classes=list(classes),
        pred=winner,
        probs=probs,
        evidence=evidence,
        certainty=probs.max(axis=1),
        p_correct=p_correct,
        anomaly=anomaly,
        flagged=flagged,
        unet_calls=res.calls,
        seconds=seconds,
        settings=settings,
        by_appearance=by_appearance,
        flag_below=flag_below,
        anomaly_threshold=threshold,
    )


def classify_crops(model, crops: np.ndarray, **kwargs: Any) -> Classification:
    """Run :func:`iter_classify` to completion and return the result."""
    out = None
    for item in iter_classify(model, crops, **kwargs):
        out = item
    assert isinstance(out, Classification)
    return out
