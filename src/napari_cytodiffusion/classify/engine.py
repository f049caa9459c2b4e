"""Adaptive diffusion errors: the expensive core of the generative classifier.

For every cell, a set of *units* (a timestep, optionally under a test-time view such as a
rotation) is evaluated. Each unit draws one noise image, shared by all classes, so the
per-class errors are paired. Classes are evaluated in rounds; after each round, a class whose
paired error difference to the current best is significantly positive is dropped. Cells x
classes x units are batched into large UNet calls.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .anomaly import BANDS, band_index

#: Candidate timestep grid used when a model has no calibrated one.
DEFAULT_TIMESTEPS = [int(t) for t in np.linspace(30, 930, 31).round()]

VIEWS = ("identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")


@dataclass
class EngineConfig:
    """How to spend UNet calls."""

    timesteps: list[int] = field(default_factory=lambda: list(DEFAULT_TIMESTEPS))
    weights: list[float] | None = None  # per timestep; default uniform
    scales: list[float] | None = None  # per timestep std of paired differences; default 1
    adaptive: bool = True
    units_per_round: int = 2
    drop_z: float = 2.5
    min_units_before_drop: int = 2
    max_units: int | None = None
    tta: int = 1
    #: once a single class is left (the call can no longer change), keep evaluating it only until
    #: each noise band of the anomaly profile (``anomaly.BANDS``) holds this many of its units;
    #: None evaluates it at every unit
    decided_band_units: int | None = None
    #: once a single class is left, evaluate it only at units of the first this many test-time
    #: views (``VIEWS`` order; with ``tta`` > 1 the later views add evidence the call no longer
    #: needs); None evaluates it under every view
    decided_views: int | None = None
    #: also evaluate the null (unconditional) label at every unit: its error against the winner's
    #: (how much the class label helps) is a feature of the anomaly profile ``gaps="null"``, one
    #: call per unit and cell
    null: bool = False
    disc_radius: float | None = None
    seed: int = 0
    #: UNet evaluations per call; None = 2048 on a GPU; on a CPU (cache-friendly sizes, 2 cores,
    #: 32 px) 64 with PyTorch (6 ms per evaluation vs 10 ms at 512) and 32 per ONNX Runtime
    #: session (int8: 3.9 ms per evaluation vs 4.0 at 64 and 4.6 at 256; the batch is split
    #: between the backend's parallel sessions, see ``OrtUNet``)
    batch_size: int | None = None

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any], **overrides: Any) -> EngineConfig:
        eng = dict(calibration.get("engine", {}))
        eng.update({k: v for k, v in overrides.items() if v is not None})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in eng.items() if k in known})


@dataclass
class ErrorResult:
    """Paired diffusion errors of a batch of cells.

    Attributes
    ----------
    errors
        (N, C, U) raw mean squared noise-prediction errors; NaN where not evaluated.
    active
        (N, C) classes still active at the end.
    calls
        (N,) UNet evaluations spent on each cell.
    unit_timesteps
        (U,) timestep of each unit.
    null_errors
        (N, U) errors under the null label (``EngineConfig.null``), else None.
    """

    errors: np.ndarray
    active: np.ndarray
    calls: np.ndarray
    unit_timesteps: np.ndarray
    unit_weights: np.ndarray
    unit_scales: np.ndarray
    null_errors: np.ndarray | None = None


def _view(x, v: int):
    import torch

    if v >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k=v % 4, dims=(-2, -1))


def _disc_mask(size: int, radius: float | None, device):
    import torch

    if radius is None:
        return None
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    r = torch.sqrt((yy - c) ** 2 + (xx - c) ** 2) / (size / 2)
    m = torch.clamp((radius + 0.1 - r) / 0.2, 0, 1).float().to(device)
    return m / m.mean()


def crop_ids(crops: np.ndarray) -> np.ndarray:
    """Noise ids of uint8 crops (N, S, S, 3): 48 bits of a hash of each crop's pixels.

    Seeding a cell's noise by its pixels makes its errors, and so its call, probabilities and
    scores, its own: the same crop draws the same noise alone, in any batch and at any place in
    a run (the same cell classified again after only other cells changed keeps its numbers).
    """
    crops = np.ascontiguousarray(crops)
    return np.array(
        [int.from_bytes(hashlib.blake2b(c.tobytes(), digest_size=6).digest(), "little") for c in crops],
        dtype=np.int64,
    )


def unit_noise(cell_ids, n_units: int, size: int, seed: int = 0):
    """(N, U, 3, S, S) noise of each cell's first ``n_units`` units, drawn from the cell's own generator.

    A cell's noise depends only on its id (:func:`crop_ids` in a classification run) and the
    seed, and a unit's noise is a prefix draw of the cell's generator, so it does not depend on the
    batch or on how many units are drawn.
    """
    import torch

    noise = torch.empty((len(cell_ids), n_units, 3, size, size))
    for i, cid in enumerate(cell_ids):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(cid)) % (1 << 63))
        noise[i] = torch.randn((n_units, 3, size, size), generator=g)
    return noise


def diffusion_errors(
    unet,
    alphas_cumprod,
    x0,
    n_classes: int,
    config: EngineConfig,
    cell_ids: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    first_unit: int = 0,
) -> ErrorResult:
    """Compute paired per-class diffusion errors for a batch of cells.

    Parameters
    ----------
    unet
        Class-conditional diffusers UNet (epsilon prediction).
    alphas_cumprod
        Tensor of cumulative alphas of the training schedule.
    x0
        (N, 3, S, S) float tensor in [-1, 1], on the UNet's device.
    n_classes
        Number of real classes (the null class is not evaluated).
    config
        Engine settings.
    cell_ids
        Stable ids used to seed each cell's noise, so a cell's result does not depend
        on what else is in the batch (default 0..N-1; classification uses :func:`crop_ids`).
    progress
        Called with the number of UNet evaluations done after each UNet call.
    should_stop
        Polled between UNet calls; raise :class:`~napari_cytodiffusion.errors.Cancelled`.
    first_unit
        Full grid only: leave the units before this one unevaluated (NaN), e.g. to add views to
        an earlier full-grid run; a unit's noise does not depend on which others are evaluated.
    """
    import torch

    from ..errors import Cancelled

    dev = x0.device
    n, _, size, _ = x0.shape
    ts = list(config.timesteps)
    k = len(ts)
    views = max(1, min(int(config.tta), len(VIEWS)))
    # units: view-major so the first rounds see every timestep in the identity view
    unit_t = np.array([ts[i % k] for i in range(k * views)], dtype=np.int64)
    unit_v = np.array([i // k for i in range(k * views)], dtype=np.int64)
    w = np.asarray(config.weights if config.weights is not None else np.ones(k), dtype=np.float64)
    s = np.asarray(config.scales if config.scales is not None else np.ones(k), dtype=np.float64)
    unit_w, unit_s = np.tile(w, views), np.tile(s, views)
    n_units = len(unit_t) if config.max_units is None else min(len(unit_t), int(config.max_units))
    if first_unit and config.adaptive:
        raise ValueError("first_unit needs a full-grid run (adaptive=False)")
    if cell_ids is None:
        cell_ids = np.arange(n)
    noise = unit_noise(cell_ids, n_units, size, config.seed).to(dev)
    ac = alphas_cumprod.to(dev)
    mask = _disc_mask(size, config.disc_radius, dev)
    # the null label is evaluated as class ``n_classes``, never active in the paired test
    errors = np.full((n, n_classes + int(config.null), n_units), np.nan, dtype=np.float64)
    active = np.ones((n, n_classes), dtype=bool)
    calls = np.zeros(n, dtype=np.int64)
    done_units = int(first_unit)
    per_round = n_units if not config.adaptive else max(1, int(config.units_per_round))
    backend = getattr(unet, "backend", "torch")
    per_cpu_batch = 64 if backend == "torch" else 32 * int(getattr(unet, "workers", 1))
    batch_size = int(config.batch_size or (2048 if dev.type != "cpu" else per_cpu_batch))
    channels_last = dev.type == "cpu" and backend == "torch"
    unit_band = band_index(unit_t[:n_units])
    while done_units < n_units:
        units = list(range(done_units, min(n_units, done_units + per_round)))
        items = _round_items(
            active, units, errors, unit_band, config.decided_band_units, unit_v, config.decided_views
        )
        if config.null:
            items += [(ci, n_classes, u) for ci in range(n) for u in units]
        for start in range(0, len(items), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("classification cancelled")
            chunk = items[start : start + batch_size]
            ci = torch.as_tensor([it[0] for it in chunk], device=dev)
            cl = torch.as_tensor([it[1] for it in chunk], device=dev)
            uu = np.array([it[2] for it in chunk])
            ut = torch.as_tensor(unit_t[uu], device=dev)
            eps = noise[ci, torch.as_tensor(uu, device=dev)]
            xs = x0[ci]
            if views > 1:
                xs = torch.stack([_view(xs[j], int(unit_v[u])) for j, u in enumerate(uu)])
            a = ac[ut][:, None, None, None]
            xt = a.sqrt() * xs + (1 - a).sqrt() * eps
            if channels_last:
                xt = xt.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                pred = unet(xt, ut, class_labels=cl).sample
            sq = (pred.float() - eps) ** 2
            if mask is not None:
                sq = sq * mask
            err = sq.mean(dim=(1, 2, 3)).cpu().numpy()
            errors[ci.cpu().numpy(), cl.cpu().numpy(), uu] = err
            np.add.at(calls, ci.cpu().numpy(), 1)
            if progress is not None:
                progress(len(chunk))
        done_units = units[-1] + 1
        if config.adaptive and done_units >= config.min_units_before_drop and done_units < n_units:
            _drop_classes(
                errors[:, :n_classes, :done_units],
                active,
                unit_w[:done_units],
                unit_s[:done_units],
                config.drop_z,
            )
    null_errors = errors[:, n_classes] if config.null else None
    return ErrorResult(
        errors[:, :n_classes],
        active,
        calls,
        unit_t[:n_units],
        unit_w[:n_units],
        unit_s[:n_units],
        null_errors,
    )


def replay_errors(
    errors: np.ndarray,
    unit_timesteps,
    unit_weights,
    unit_scales,
    config: EngineConfig,
    null_errors: np.ndarray | None = None,
) -> ErrorResult:
    """The run :func:`diffusion_errors` would make, on errors computed before for every unit.

    ``errors`` (N, C, U) holds every class at every unit (a full grid, view-major as the engine
    orders units, e.g. ``benchmarks/full_grid_errors.py``). A unit's error does not depend on
    which others are evaluated (each cell and unit has its own noise), so replaying the engine's
    rounds and paired test on it gives the engine's errors, calls and classes left exactly, for
    the first ``len(config.timesteps) * config.tta`` units (capped at ``config.max_units``).
    With ``config.null``, ``null_errors`` (N, U) are the null label's errors at every unit (a
    dump's last class, ``full_grid_errors.py`` without ``--without-null``).
    """
    k, views = len(config.timesteps), max(1, int(config.tta))
    if errors.shape[2] < k * views:
        raise ValueError(f"the errors hold {errors.shape[2]} units; {views} views of {k} timesteps need more")
    total = k * views if config.max_units is None else min(k * views, int(config.max_units))
    errors = errors[:, :, :total]
    t = np.asarray(unit_timesteps)[:total]
    w, s = np.asarray(unit_weights, float)[:total], np.asarray(unit_scales, float)[:total]
    n, c, u = errors.shape
    null = None
    if config.null:
        if null_errors is None or null_errors.shape[0] != n or null_errors.shape[1] < total:
            raise ValueError("config.null needs the null label's errors of every cell at every unit")
        null = np.asarray(null_errors, dtype=np.float64)[:, :total]
    if not config.adaptive:
        return ErrorResult(errors, np.ones((n, c), bool), np.full(n, (c + config.null) * u), t, w, s, null)
    out = np.full(errors.shape, np.nan)
    active = np.ones((n, c), dtype=bool)
    calls = np.zeros(n, dtype=np.int64)
    unit_view, unit_band = np.arange(u) // k, band_index(t)
    done = 0
    per_round = max(1, int(config.units_per_round))
    while done < u:
        units = list(range(done, min(u, done + per_round)))
        items = _round_items(
            active, units, out, unit_band, config.decided_band_units, unit_view, config.decided_views
        )
        if items:
            ci, cl, uu = np.array(items).T
            out[ci, cl, uu] = errors[ci, cl, uu]
            np.add.at(calls, ci, 1)
        done = units[-1] + 1
        if done >= config.min_units_before_drop and done < u:
            _drop_classes(out[:, :, :done], active, w[:done], s[:done], config.drop_z)
    if null is not None:
        calls += u
    return ErrorResult(out, active, calls, t, w, s, null)


def _round_items(
    active: np.ndarray,
    units: list[int],
    errors: np.ndarray,
    unit_band: np.ndarray,
    band_units: int | None,
    unit_view: np.ndarray | None = None,
    decided_views: int | None = None,
) -> list[tuple[int, int, int]]:
    """(cell, class, unit) evaluations of one round.

    Every active class of every cell is evaluated at every unit of the round, except for a cell
    whose call is decided (one class left): with ``decided_views`` its class is evaluated only at
    units of the first ``decided_views`` views, and with ``band_units`` only at the units that
    bring a noise band still short of ``band_units`` evaluated units closer to it.
    """
    cells, classes = np.nonzero(active)
    if band_units is None and decided_views is None:
        return [(ci, cl, u) for ci, cl in zip(cells, classes, strict=True) for u in units]
    decided = active.sum(axis=1) == 1
    if decided_views is not None and unit_view is not None:
        decided_units = [u for u in units if unit_view[u] < decided_views]
    else:
        decided_units = list(units)
    n_bands = len(BANDS) - 1
    items = []
    for ci, cl in zip(cells, classes, strict=True):
        if not decided[ci]:
            items.extend((ci, cl, u) for u in units)
            continue
        if band_units is None:
            items.extend((ci, cl, u) for u in decided_units)
            continue
        done = np.isfinite(errors[ci, cl])
        have = np.bincount(unit_band[done], minlength=n_bands)
        for u in decided_units:
            b = unit_band[u]
            if have[b] < band_units:
                have[b] += 1
                items.append((ci, cl, u))
    return items


def _drop_classes(errors: np.ndarray, active: np.ndarray, w: np.ndarray, s: np.ndarray, z: float) -> None:
    """Paired z-test (variance floored at 1 in scale units) against the current best class."""
    n, c, u = errors.shape
    score = weighted_score(errors, w)
    score = np.where(active, score, np.inf)
    best = np.argmin(score, axis=1)
    diff = (errors - errors[np.arange(n), best][:, None, :]) / s[None, None, :]
    masked = np.where(active[:, :, None], diff, np.nan)
    with warnings.catch_warnings():  # inactive classes are all-NaN rows by design
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(masked, axis=2)
        var = np.nanvar(masked, axis=2, ddof=1) if u > 1 else np.ones((n, c))
    se = np.sqrt(np.maximum(np.nan_to_num(var, nan=1.0), 1.0) / u)
    drop = active & (mean / se > z)
    drop[np.arange(n), best] = False
    active &= ~drop


def weighted_score(errors: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean error over evaluated units → (N, C) (NaN-aware)."""
    ok = np.isfinite(errors)
    ww = np.where(ok, w[None, None, :], 0.0)
    tot = ww.sum(axis=2)
    return np.where(
        tot > 0, np.nansum(np.where(ok, errors, 0.0) * ww, axis=2) / np.maximum(tot, 1e-12), np.inf
    )


def class_evidence(result: ErrorResult, winner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Winner and per-class evidence D (N, C) ≥ 0: weighted mean paired error gap to the winner.

    Each class is compared with the winner on the units where both were evaluated. A given
    ``winner`` (e.g. the best class a prior allows) replaces the lowest-error class; classes
    better than it get evidence 0.
    """
    e, w = result.errors, result.unit_weights
    if winner is None:
        score = np.where(result.active, weighted_score(e, w), np.inf)
        winner = np.argmin(score, axis=1)
    n = e.shape[0]
    diff = e - e[np.arange(n), winner][:, None, :]
    gap = weighted_score(diff, w)
    gap[np.arange(n), winner] = 0.0
    gap = np.where(
        np.isfinite(gap),
        gap,
        np.nanmax(np.where(np.isfinite(gap), gap, np.nan)) if np.isfinite(gap).any() else 1.0,
    )
    return winner, np.maximum(gap, 0.0)


def merge_results(parts: list[ErrorResult], n_classes: int) -> ErrorResult:
    """Concatenate the results of consecutive batches of cells (same engine settings)."""
    if not parts:
        one = np.ones(1)
        return ErrorResult(
            np.zeros((0, n_classes, 1)),
            np.zeros((0, n_classes), bool),
            np.zeros(0, np.int64),
            np.zeros(1, np.int64),
            one,
            one,
        )
    ref = parts[0]
    return ErrorResult(
        np.concatenate([p.errors for p in parts]),
        np.concatenate([p.active for p in parts]),
        np.concatenate([p.calls for p in parts]),
        ref.unit_timesteps,
        ref.unit_weights,
        ref.unit_scales,
        None if ref.null_errors is None else np.concatenate([p.null_errors for p in parts]),
    )


def iter_batches(n: int, batch: int) -> Iterator[slice]:
    for start in range(0, n, batch):
        yield slice(start, min(n, start + batch))
