"""Would int8 (ONNX Runtime static quantization) make the classifier faster without changing its calls?

Exports the default model's UNet to ONNX (float32), quantizes its convolutions and matrix
products to int8 (QDQ, per-channel weights, activations calibrated on noised PBC *train* cells at
the classifier's timesteps), then on the same PBC val cells (same seed) reports, per backend:
ms per UNet evaluation at batch 64, cells/s, accuracy, and the share of predictions identical to
float32 ONNX.

    python benchmarks/unet_int8.py [--cells 160] [--calib-cells 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def calibration_batches(model, crops: np.ndarray, n_batches: int, batch: int, seed: int = 0):
    """Noised crops at random timesteps and class labels, as the classifier feeds the UNet."""
    import torch

    rng = np.random.default_rng(seed)
    ab = model.scheduler.alphas_cumprod.numpy()
    x0 = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    for _ in range(n_batches):
        i = rng.integers(0, len(x0), batch)
        t = rng.integers(20, 980, batch)
        c = rng.integers(0, len(model.classes) + 1, batch)
        eps = rng.standard_normal(x0[i].shape).astype(np.float32)
        a = ab[t].astype(np.float32)[:, None, None, None]
        x = np.sqrt(a) * x0[i].numpy() + np.sqrt(1 - a) * eps
        yield {"x": x.astype(np.float32), "t": t.astype(np.int64), "c": c.astype(np.int64)}


def quantize(fp32: Path, out: Path, batches, ops: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, items) -> None:
            self.items = iter(list(items))

        def get_next(self):
            return next(self.items, None)

    pre = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        Reader(batches),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=ops,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--pbc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc"
    )
    ap.add_argument("--cells", type=int, default=160)
    ap.add_argument("--calib-cells", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument(
        "--ops", nargs="+", default=["Conv", "MatMul", "Gemm"], help="ONNX operator types to quantize"
    )
    args = ap.parse_args()
    import torch

    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, map_classes, read_labelled
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV, OrtUNet
    from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR

    torch.set_num_threads(args.threads)
    os.environ[BACKEND_ENV] = "onnx"
    model = load_model(DEFAULT_MODEL_DIR)
    fp32 = model.inference_unet()
    pre = model.metadata.preprocessing

    def crops_of(split: str, n: int, seed: int):
        ls = read_labelled(args.pbc / "labels.csv", split=split)
        idx = np.random.default_rng(seed).permutation(len(ls.paths))[:n]
        crops = load_single_cell_crops(
            [ls.paths[i] for i in idx], pre["size"], pre["single_cell"]["center_crop_fraction"]
        )
        return crops, map_classes([ls.classes[i] for i in idx], model.classes)

    calib, _ = crops_of("train", args.calib_cells, 1)
    work = Path(tempfile.mkdtemp(prefix="unet_int8_"))
    t0 = time.perf_counter()
    q = quantize(fp32.path, work / "unet_int8.onnx", calibration_batches(model, calib, 16, 64), args.ops)
    out: dict = {"ops": args.ops, "quantize_seconds": round(time.perf_counter() - t0, 1)}
    out["size_mb"] = {
        "fp32": round(fp32.path.stat().st_size / 1e6, 2),
        "int8": round(q.stat().st_size / 1e6, 2),
    }
    int8 = OrtUNet(q, threads=args.threads)
    backends = {"onnx_fp32": fp32, "onnx_int8": int8}
    if not args.skip_timing:
        b = 64
        x = torch.randn(b, 3, model.size, model.size)
        t = torch.randint(0, 1000, (b,))
        c = torch.randint(0, len(model.classes), (b,))
        for name, net in backends.items():
            net(x, t, class_labels=c)
            t0 = time.perf_counter()
            for _ in range(10):
                net(x, t, class_labels=c)
            out[f"{name}_ms_per_eval"] = round(1000 * (time.perf_counter() - t0) / 10 / b, 2)
        with torch.inference_mode():
            ref = fp32(x, t, class_labels=c).sample
            got = int8(x, t, class_labels=c).sample
        out["eps_rel_error"] = round(float((got - ref).norm() / ref.norm()), 4)
    crops, y = crops_of("val", args.cells, 0)
    preds = {}
    for name, net in backends.items():
        object.__setattr__(model, "_inference_unet", net)
        t0 = time.perf_counter()
        r = classify_crops(model, crops, speed="balanced", seed=0)
        dt = time.perf_counter() - t0
        preds[name] = r.pred
        out[name] = {
            "cells_per_second": round(len(crops) / dt, 2),
            "unet_calls_per_cell": round(float(r.unet_calls.mean()), 1),
            "accuracy": round(float((r.pred == y).mean()), 4),
        }
        print(name, out[name], flush=True)
    out["predictions_identical"] = float((preds["onnx_fp32"] == preds["onnx_int8"]).mean())
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
