"""Where does the class evidence lie? Full-grid errors per ring, in the crop or in its spectrum.

The classifier scores a class by the mean squared noise-prediction error over the whole crop
(``classify/engine.py``; ``EngineConfig.disc_radius`` can weight a central disc instead, off by
default). A crop spans ~2.9 red cells, so most of its pixels are the red cells around the cell
being classified. This script dumps the full grid (every class, every timestep, one view) with
each unit's error split into concentric rings, so that any radial weighting can be replayed
offline: the error of a weighting ``w`` is ``sum_k w_k ring_sum_k / sum_k w_k ring_pixels_k``.
The noise is the engine's (:func:`~napari_cytodiffusion.classify.engine.unit_noise` of the
crop's :func:`~napari_cytodiffusion.classify.engine.crop_ids`), and the
first cells are checked against :func:`~napari_cytodiffusion.classify.engine.diffusion_errors`
(the rings together give the engine's whole-crop error).

With ``--space frequency`` the rings are bands of spatial frequency instead: each unit's residual
(predicted minus drawn noise) is Fourier transformed per channel and its power summed per band of
radial frequency (Parseval: the bands together are again the engine's error, and ``ring_pixels``
counts frequency bins). Drawn noise is white, so every band holds noise; a class's misfit may not
be, and weighting the bands can raise the evidence over that noise.

Then, with ``--calibration`` and ``--test`` dumps, it replays each weighting: timestep weights and
scales refitted on the calibration cells (``classify.calibration.timestep_statistics``), the full
grid and the engine's adaptive rounds and paired test (``classify.engine.replay_errors``) at the
model's ``drop_z``, accuracy and balanced accuracy of the test cells.

Usage::

    python benchmarks/radial_errors.py dump --cache pbc_cache.npz --split cal --int8 --out runs/rings_cal.npz
    python benchmarks/radial_errors.py dump --cache pbc_cache.npz --split val --int8 --out runs/rings_val.npz
    python benchmarks/radial_errors.py replay --calibration runs/rings_cal.npz --test runs/rings_val.npz
    python benchmarks/radial_errors.py dump ... --space frequency --out runs/bands_cal.npz  # and val; replay
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: ring edges in units of the crop's half side (distance from the centre; corners reach 1.41)
EDGES = (0.0, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05, 1.5)
#: frequency band edges in units of the Nyquist frequency (a 32-px crop's bins are 1/16 apart)
FREQ_EDGES = (0.0, 0.09, 0.16, 0.22, 0.32, 0.44, 0.6, 0.78, 1.03, 1.5)
SPACES = {"pixels": EDGES, "frequency": FREQ_EDGES}


def ring_index(size: int, space: str = "pixels") -> np.ndarray:
    """(S, S) ring of each pixel (or of each frequency bin of ``torch.fft.fft2``).

    Pixels: the radius as the engine's disc mask measures it, in half sides of the crop.
    Frequency: the radial frequency in units of the Nyquist frequency.
    """
    if space == "frequency":
        f = np.fft.fftfreq(size) * 2  # cycles per pixel / Nyquist
        fy, fx = np.meshgrid(f, f, indexing="ij")
        return np.digitize(np.sqrt(fy**2 + fx**2), FREQ_EDGES[1:-1])
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    c = (size - 1) / 2
    r = np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / (size / 2)
    return np.digitize(r, EDGES[1:-1])


def residual_power(pred, eps, space: str):
    """(B, S*S) squared residual per pixel, or per frequency bin (Parseval-scaled), channel mean."""
    import torch

    r = pred.float() - eps
    if space == "frequency":
        size = r.shape[-1]
        return (torch.fft.fft2(r).abs() ** 2 / (size * size)).mean(dim=1).flatten(1)
    return (r**2).mean(dim=1).flatten(1)


def dump(args) -> int:
    if args.int8:
        import os

        from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

        os.environ[BACKEND_ENV] = "int8"
    import torch

    from napari_cytodiffusion.classify.engine import EngineConfig, crop_ids, diffusion_errors, unit_noise
    from napari_cytodiffusion.crops import to_model_tensor
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.registry import resolve_model

    model = load_model(resolve_model(str(args.model) if args.model else None))
    z = np.load(args.cache)
    x, y = z[f"{args.split}_images"], z[f"{args.split}_labels"]
    cache_classes = [str(c) for c in z["classes"]]
    pick = np.arange(len(x)) if args.limit is None else np.arange(min(args.limit, len(x)))
    cfg = EngineConfig.from_calibration(model.metadata.calibration or {}, adaptive=False, seed=args.seed)
    net = model.inference_unet() if args.int8 else model.unet
    ac = model.alphas_cumprod()
    n_cls, size = model.metadata.n_classes, model.size
    ts = np.asarray(cfg.timesteps)
    u = len(ts)
    index = ring_index(size, args.space)
    rings = torch.as_tensor(index).flatten()
    n_rings = len(SPACES[args.space]) - 1
    pixels = np.bincount(index.ravel(), minlength=n_rings)
    out = np.zeros((len(pick), n_cls, u, n_rings))
    batch = 32 * int(getattr(net, "workers", 1)) if args.int8 else 64
    t0 = time.perf_counter()
    for s in range(0, len(pick), args.chunk):
        ids = pick[s : s + args.chunk]
        x0 = to_model_tensor(x[ids]).to(model.device)
        seeds = crop_ids(x[ids])
        noise = unit_noise(seeds, u, size, cfg.seed)
        if args.negate_noise:  # the antithetic draw of every unit (benchmarks/antithetic_noise.py)
            noise = -noise
        items = [(i, c, k) for k in range(u) for i in range(len(ids)) for c in range(n_cls)]
        for b in range(0, len(items), batch):
            it = np.array(items[b : b + batch])
            ci, cl, uu = (torch.as_tensor(it[:, j]) for j in range(3))
            t = torch.as_tensor(ts[it[:, 2]])
            eps = noise[ci, uu]
            a = ac[t][:, None, None, None]
            xt = a.sqrt() * x0[ci] + (1 - a).sqrt() * eps
            with torch.inference_mode():
                pred = net(xt, t, class_labels=cl).sample
            sq = residual_power(pred, eps, args.space)  # (B, S*S)
            sums = torch.zeros((len(it), n_rings), dtype=torch.float64)
            sums.index_add_(1, rings, sq.double())
            out[s + it[:, 0], it[:, 1], it[:, 2]] = sums.numpy()
        if s == 0 and not args.negate_noise:  # the rings together are the engine's error
            check = min(4, len(ids))
            ref = diffusion_errors(net, ac, x0[:check], n_cls, cfg, cell_ids=seeds[:check]).errors
            mine = out[:check].sum(axis=3) / (size * size)
            diff = float(np.max(np.abs(mine - ref) / ref))
            if diff > 1e-4:
                raise SystemExit(f"ring errors differ from the engine's by {diff:.2e}")
            print(f"first {check} cells match the engine (largest relative difference {diff:.1e})")
        print(f"{s + len(ids)}/{len(pick)} cells, {time.perf_counter() - t0:.0f} s", flush=True)
    remap = {c: i for i, c in enumerate(model.classes)}
    labels = np.array([remap.get(cache_classes[v], -1) for v in y[pick]])
    np.savez(
        args.out, ring_sums=out, ring_pixels=pixels, edges=np.array(SPACES[args.space]),
        space=args.space, negated=args.negate_noise, seed=cfg.seed, labels=labels,
        cell_ids=pick, timesteps=ts, drop_z=cfg.drop_z, classes=np.array(model.classes),
    )  # fmt: skip
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def weighted(d, w: np.ndarray) -> np.ndarray:
    """(N, C, U) errors of a weighting: one weight per ring, or (U, R) one per timestep and ring."""
    w = np.broadcast_to(np.asarray(w, float), d["ring_sums"].shape[2:])
    return (d["ring_sums"] * w).sum(axis=3) / (d["ring_pixels"] * w).sum(axis=1)


def evaluate(cal, test, w: np.ndarray, z: float, classes: list[str]) -> dict:
    """Full grid and adaptive figures of a weighting, timestep constants refitted on ``cal``."""
    from napari_cytodiffusion.classify.calibration import timestep_statistics
    from napari_cytodiffusion.classify.engine import EngineConfig, class_evidence, replay_errors
    from napari_cytodiffusion.evaluate.metrics import classification_metrics

    ec, et = weighted(cal, w), weighted(test, w)
    ts = [int(t) for t in cal["timesteps"]]
    stats = timestep_statistics(ec, cal["labels"], ts)
    order = [ts.index(t) for t in stats["timesteps"]]
    ec, et = ec[:, :, order], et[:, :, order]
    out = {}
    for name, adaptive in (("full", False), ("adaptive", True)):
        cfg = EngineConfig(
            timesteps=stats["timesteps"], weights=stats["weights"], scales=stats["scales"],
            adaptive=adaptive, drop_z=z,
        )  # fmt: skip
        r = replay_errors(et, cfg.timesteps, cfg.weights, cfg.scales, cfg)
        pred, _ = class_evidence(r)
        probs = np.eye(len(classes))[pred]
        m = classification_metrics(test["labels"], pred, probs, probs.max(axis=1), classes)
        out[name] = {
            "accuracy": round(m["accuracy"], 4),
            "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "calls": round(float(r.calls.mean()), 1),
        }
    return out


def fitted_weights(cal, units: np.ndarray | None = None) -> np.ndarray:
    """Ring weights that best separate the true class from the others on ``cal`` (clipped at 0).

    The linear discriminant of the paired gaps (wrong class minus true class, per ring, each
    timestep in units of its whole-crop spread): ``w = cov^-1 mean``, clipped at zero and scaled
    to a largest weight of 1. ``units``: fit on these timestep indices only.
    """
    rs, y = cal["ring_sums"], cal["labels"]
    if units is not None:
        rs = rs[:, :, units]
    n, c = rs.shape[:2]
    gaps = rs - rs[np.arange(n), y][:, None]
    wrong = np.ones((n, c), bool)
    wrong[np.arange(n), y] = False
    g = gaps[wrong]  # (M, U, R)
    g = g / g.sum(axis=2).std(axis=0)[None, :, None]
    g = g.reshape(-1, g.shape[2])
    w = np.linalg.solve(np.cov(g, rowvar=False), g.mean(axis=0))
    w = np.clip(w, 0, None)
    return w / w.max()


def fitted_per_band(cal) -> np.ndarray:
    """(U, R) weights: :func:`fitted_weights` on each noise band's timesteps (``anomaly.BANDS``)."""
    from napari_cytodiffusion.classify.anomaly import band_index

    bands = band_index(cal["timesteps"])
    w = np.zeros(cal["ring_sums"].shape[2:])
    for b in np.unique(bands):
        units = np.flatnonzero(bands == b)
        w[units] = fitted_weights(cal, units)
    return w


def replay(args) -> int:
    cal, test = dict(np.load(args.calibration)), dict(np.load(args.test))
    classes = [str(c) for c in cal["classes"]]
    edges = cal["edges"]
    z = float(args.drop_z if args.drop_z is not None else cal["drop_z"])
    if str(cal.get("space", "pixels")) == "frequency":
        rows = frequency_rows(cal, edges)
    else:
        rows = pixel_rows(cal, edges)
    results = {}
    for name, w in rows.items():
        results[name] = evaluate(cal, test, w, z, classes) | {"ring_weights": np.asarray(w).tolist()}
        f, a = results[name]["full"], results[name]["adaptive"]
        print(
            f"{name:36s} full grid acc {f['accuracy']:.4f} bal {f['balanced_accuracy']:.4f} | "
            f"adaptive (z {z:g}) acc {a['accuracy']:.4f} bal {a['balanced_accuracy']:.4f} "
            f"calls {a['calls']:.1f}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


def frequency_rows(cal, edges) -> dict[str, np.ndarray]:
    """Weightings of frequency bands: low-pass, high bands halved, bands alone, fitted."""
    n = len(edges) - 1
    k = np.arange(n)
    rows = {"every frequency (the engine)": np.ones(n)}
    for j in range(2, n):
        rows[f"low-pass f < {edges[j]:.2f} Nyquist"] = (k < j).astype(float)
    for j in range(1, n):
        rows[f"above {edges[j]:.2f} Nyquist halved"] = np.where(k < j, 1.0, 0.5)
    rows["lowest band left out"] = (k > 0).astype(float)
    for j in range(n):
        rows[f"band {edges[j]:.2f}-{edges[j + 1]:.2f} alone"] = (k == j).astype(float)
    rows["fitted on calibration cells"] = fitted_weights(cal)
    print("fitted band weights:", " ".join(f"{v:.2f}" for v in rows["fitted on calibration cells"]))
    rows["fitted per noise band"] = fitted_per_band(cal)
    return rows


def pixel_rows(cal, edges) -> dict[str, np.ndarray]:
    """Radial weightings of the crop: discs, the centre weighted up, rings alone, fitted."""
    n_rings = len(edges) - 1
    rows = {"whole crop": np.ones(n_rings)}
    for k in range(2, n_rings):  # hard discs out to each ring edge
        rows[f"disc r <= {edges[k]:.2f}"] = (np.arange(n_rings) < k).astype(float)
    for k in range(1, n_rings - 1):  # the centre weighted up
        rows[f"centre x2 inside {edges[k + 1]:.2f}"] = np.where(np.arange(n_rings) <= k, 2.0, 1.0)
    rows["corners left out (r <= 1.05)"] = (np.arange(n_rings) < n_rings - 1).astype(float)
    for k in range(n_rings):  # where the evidence lies
        rows[f"ring {edges[k]:.2f}-{edges[k + 1]:.2f} alone"] = (np.arange(n_rings) == k).astype(float)
    rows["outside r > 0.60 only"] = (edges[:-1] >= 0.6 - 1e-9).astype(float)
    rows["fitted on calibration cells"] = fitted_weights(cal)
    print("fitted ring weights:", " ".join(f"{v:.2f}" for v in rows["fitted on calibration cells"]))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="full-grid errors per ring")
    d.add_argument("--model", type=Path, default=None, help="model folder (default: shipped)")
    d.add_argument("--cache", type=Path, required=True, help="npz from train_default_model.py prepare")
    d.add_argument(
        "--split", default="cal", help="the cache's {split}_images / {split}_labels (cal, val, ...)"
    )
    d.add_argument("--limit", type=int, default=None, help="the first N cells only")
    d.add_argument("--chunk", type=int, default=32, help="cells per noise draw")
    d.add_argument("--int8", action="store_true", help="the folder's int8 UNet")
    d.add_argument("--seed", type=int, default=None, help="noise seed (default: the engine's)")
    d.add_argument("--negate-noise", action="store_true", help="every unit under minus its noise")
    d.add_argument(
        "--space", choices=sorted(SPACES), default="pixels",
        help="rings of the crop (pixels) or bands of spatial frequency",
    )  # fmt: skip
    d.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay", help="radial weightings replayed on two dumps")
    r.add_argument("--calibration", type=Path, required=True)
    r.add_argument("--test", type=Path, required=True)
    r.add_argument("--drop-z", type=float, default=None, help="paired-test threshold (default: the dump's)")
    r.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    return dump(args) if args.cmd == "dump" else replay(args)


if __name__ == "__main__":
    raise SystemExit(main())
