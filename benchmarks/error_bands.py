"""Dump paired diffusion errors split by spatial-frequency band (for variance-reduction studies).

By Parseval, a unit's squared noise-prediction error is the sum of the error power in radial
frequency bands of (predicted − true noise). Saving the bands lets any band weighting be
evaluated offline: which frequencies carry the class signal, and which only add noise.

    python benchmarks/error_bands.py --cache pbc_cache.npz --per-class 25 --out runs/bands_cal.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def band_index(size: int, n_bands: int) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    r = np.sqrt(fy**2 + fx**2) / np.sqrt(0.5)  # 0..1
    return np.minimum((r * n_bands).astype(int), n_bands - 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--split", default="cal", choices=["cal", "val"])
    ap.add_argument("--per-class", type=int, default=25)
    ap.add_argument("--bands", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import torch

    from napari_cytodiffusion.crops import to_model_tensor
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.registry import resolve_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(resolve_model(str(args.model) if args.model else None))
    eng = model.metadata.calibration["engine"]
    ts = np.array(eng["timesteps"])
    z = np.load(args.cache)
    x, y = z[f"{args.split}_images"], z[f"{args.split}_labels"]
    rng = np.random.default_rng(args.seed)
    pick = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(y == c), min(args.per_class, int((y == c).sum())), replace=False)
             for c in np.unique(y)]
        )
    )  # fmt: skip
    n_cls = model.metadata.n_classes
    size = model.size
    bidx = torch.as_tensor(band_index(size, args.bands))
    # rfft halves the spectrum: interior columns count twice (Parseval)
    colw = torch.full((size // 2 + 1,), 2.0)
    colw[0] = 1.0
    if size % 2 == 0:
        colw[-1] = 1.0
    ac = model.alphas_cumprod()
    out = np.zeros((len(pick), n_cls, len(ts), args.bands), np.float32)
    t0 = time.perf_counter()
    for i, cid in enumerate(pick):
        x0 = to_model_tensor(x[cid : cid + 1])
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + int(cid))
        eps = torch.randn((len(ts), 3, size, size), generator=g)
        t = torch.as_tensor(ts)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.inference_mode():
            pred = model.unet(
                xt.repeat(n_cls, 1, 1, 1),
                t.repeat(n_cls),
                class_labels=torch.arange(n_cls).repeat_interleave(len(ts)),
            ).sample
        diff = (pred - eps.repeat(n_cls, 1, 1, 1)).view(n_cls, len(ts), 3, size, size)
        power = torch.fft.rfft2(diff, norm="ortho").abs() ** 2 * colw  # (C, U, 3, S, S/2+1)
        power = power.sum(dim=2)  # over channels
        for b in range(args.bands):
            out[i, :, :, b] = (power[..., bidx == b].sum(-1) / (3 * size * size)).numpy()
        if (i + 1) % 25 == 0:
            print(f"{i + 1}/{len(pick)} cells, {time.perf_counter() - t0:.0f} s", flush=True)
    remap = {c: i for i, c in enumerate(model.classes)}
    labels = np.array([remap.get(str(z["classes"][v]), -1) for v in y[pick]])
    np.savez(args.out, bands=out, labels=labels, timesteps=ts, weights=np.array(eng["weights"]),
             scales=np.array(eng["scales"]), cell_ids=pick)  # fmt: skip
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
