"""Dump full-grid paired diffusion errors (every class *and the null class*, every timestep).

The adaptive classifier's choices (which timesteps first, when to drop a class, how to score
anomalies) can then be studied offline in numpy, because a unit's error does not depend on the
order in which units are evaluated (each cell/unit has its own fixed noise, seeded by the crop's
pixels as in a classification run: ``classify.engine.crop_ids``). ``cell_ids`` in the output are
the cells' indices in the split.

Usage::

    python benchmarks/full_grid_errors.py --model runs/pbc32 --cache pbc_cache.npz \
        --split cal --per-class 50 --out runs/grid_cal.npz

The output holds ``errors`` (N, C+1, U) — the last class is the null (unconditional) label, left
out with ``--without-null`` —
``labels`` (N,), ``timesteps`` (U,: with ``--views V``, V views of each
timestep, view-major as the engine orders them; ``--from-view F`` leaves out the first F, whose
noise and errors an earlier dump holds, so the two join along the unit axis) and ``classes``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def join_views(earlier, cell_ids: np.ndarray, errors: np.ndarray, first_units: int) -> np.ndarray:
    """The earlier dump's ``first_units`` units, then ``errors``' (the same cells, the later views)."""
    if not np.array_equal(earlier["cell_ids"], cell_ids):
        raise SystemExit("--append-to holds other cells (same --cache, --split, --per-class and --seed?)")
    if earlier["errors"].shape[2] != first_units:
        raise SystemExit("--append-to must hold exactly the views before --from-view")
    if earlier["errors"].shape[1] != errors.shape[1]:
        raise SystemExit("--append-to was made with a different --without-null")
    return np.concatenate([earlier["errors"], errors], axis=2)


def _or_ones(values, k: int) -> np.ndarray:
    """Per-timestep weights or scales; the engine's default (ones) where the model has none fitted."""
    return np.ones(k) if values is None else np.asarray(values, dtype=np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: shipped)")
    ap.add_argument("--cache", type=Path, required=True, help="npz from train_default_model.py prepare")
    ap.add_argument(
        "--split",
        default="cal",
        choices=["cal", "val", "images"],
        help="images: every image of an npz with an 'images' array (e.g. out-of-distribution cells)",
    )
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0, help="seed of the choice of cells")
    ap.add_argument(
        "--noise-seed",
        type=int,
        default=0,
        help="seed of the noise, as classify/evaluate --seed (another draw of the same cells)",
    )
    ap.add_argument(
        "--exclude",
        type=Path,
        nargs="*",
        default=[],
        help="earlier outputs whose cells (cell_ids) are left out, for a fresh sample of the same split",
    )
    ap.add_argument(
        "--views", type=int, default=1, help="test-time views per timestep (as the accurate preset's tta)"
    )
    ap.add_argument(
        "--from-view",
        type=int,
        default=0,
        help="leave out the first views (e.g. --views 4 --from-view 2 adds views 3-4 to a 2-view dump)",
    )
    ap.add_argument(
        "--append-to",
        type=Path,
        default=None,
        help="with --from-view: an earlier dump of the same cells holding the first views; --out then "
        "holds every view",
    )
    ap.add_argument(
        "--int8", action="store_true", help="the folder's int8 UNet (as the classifier runs on a CPU)"
    )
    ap.add_argument(
        "--without-null",
        action="store_true",
        help="leave out the null label (11 %% fewer calls; for studies of the classifier alone)",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.int8:
        import os

        from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

        os.environ[BACKEND_ENV] = "int8"

    import torch

    from napari_cytodiffusion.classify.engine import EngineConfig, crop_ids, diffusion_errors
    from napari_cytodiffusion.crops import to_model_tensor
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.registry import resolve_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(resolve_model(str(args.model) if args.model else None))
    z = np.load(args.cache)
    if args.split == "images":
        cache_classes = ["other"]
        x = z["images"]
        y = np.zeros(len(x), dtype=np.int64)
    else:
        cache_classes = [str(c) for c in z["classes"]]
        x, y = z[f"{args.split}_images"], z[f"{args.split}_labels"]
    rng = np.random.default_rng(args.seed)
    seen = set()
    for f in args.exclude:
        seen.update(int(i) for i in np.load(f)["cell_ids"])
    pick = []
    for c in range(len(cache_classes)):
        idx = np.array([i for i in np.flatnonzero(y == c) if int(i) not in seen], dtype=np.int64)
        pick.extend(rng.choice(idx, size=min(args.per_class, len(idx)), replace=False))
    pick = np.sort(np.array(pick))
    cal = model.metadata.calibration or {}
    cfg = EngineConfig.from_calibration(cal, adaptive=False, tta=args.views, seed=args.noise_seed)
    if not 0 <= args.from_view < args.views:
        raise SystemExit("--from-view must be below --views")
    first = args.from_view * len(cfg.timesteps)
    n_cls = model.metadata.n_classes + (0 if args.without_null else 1)  # the null label is last
    net = model.inference_unet() if args.int8 else model.unet
    ac = model.alphas_cumprod()
    parts = []
    t0 = time.perf_counter()
    for s in range(0, len(pick), 32):
        ids = pick[s : s + 32]
        x0 = to_model_tensor(x[ids]).to(model.device)
        parts.append(
            diffusion_errors(net, ac, x0, n_cls, cfg, cell_ids=crop_ids(x[ids]), first_unit=first).errors[
                ..., first:
            ]
        )
        print(f"{s + len(ids)}/{len(pick)} cells, {time.perf_counter() - t0:.0f} s", flush=True)
    remap = {c: i for i, c in enumerate(model.classes)}
    labels = np.array([remap.get(cache_classes[v], -1) for v in y[pick]])
    errors, views = np.concatenate(parts), args.views - args.from_view
    if args.append_to is not None:
        errors, views = join_views(np.load(args.append_to), pick, errors, first), args.views
    np.savez(
        args.out,
        errors=errors,
        labels=labels,
        cell_ids=pick,
        timesteps=np.tile(cfg.timesteps, views),
        weights=np.tile(_or_ones(cfg.weights, len(cfg.timesteps)), views),
        scales=np.tile(_or_ones(cfg.scales, len(cfg.timesteps)), views),
        drop_z=cfg.drop_z,
        noise_seed=args.noise_seed,
        classes=np.array(model.classes),
    )
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
