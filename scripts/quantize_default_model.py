"""Make the int8 UNet of the default model (``onnx/unet_int8.onnx`` in its folder).

Convolutions only, activations calibrated on noised PBC *train* cells (never val or test);
see :mod:`napari_cytodiffusion.model.quantize` and ``benchmarks/unet_int8.py`` for why.

Usage::

    python scripts/quantize_default_model.py [--model src/napari_cytodiffusion/data/models/pbc32]
        [--pbc ../shared/data/pbc] [--cells 256] [--batches 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, read_labelled
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.quantize import quantize_model
    from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument(
        "--pbc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc"
    )
    ap.add_argument("--cells", type=int, default=256, help="random PBC train cells for the activation ranges")
    ap.add_argument("--batches", type=int, default=16, help="calibration batches of 64 noised inputs")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    model = load_model(args.model)
    train = read_labelled(args.pbc / "labels.csv", split="train")
    idx = np.sort(np.random.default_rng(args.seed).permutation(len(train.paths))[: args.cells])
    pre = model.metadata.preprocessing
    crops = load_single_cell_crops(
        [train.paths[i] for i in idx], pre["size"], pre["single_cell"]["center_crop_fraction"]
    )
    t0 = time.perf_counter()
    out = quantize_model(
        model,
        crops,
        n_batches=args.batches,
        seed=args.seed,
        data_note=f"PBC train split (Acevedo et al. 2020, CC BY 4.0), {len(crops)} random cells, seed {args.seed}",
    )
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
