"""What does a UNet evaluation cost for smaller architectures than the default? (CPU, no training)

The classifier's speed is UNet calls per cell (set by how noisy the per-timestep class signal is,
see ``drop_policies.py``) times the cost of one evaluation. This prints, for candidate
architectures of the class-conditional UNet, the parameter count and milliseconds per evaluation
at the classifier's batch size with ONNX Runtime int8 (convolutions quantized as
``model/quantize.py`` does, activation ranges from random inputs: the cost does not depend on the
weights' values) and with PyTorch float32, then the cells/s that ``--calls`` UNet calls per cell
would give. The shipped int8 file is timed first as a check that untrained networks cost the same.
Input size changes the crops (the classifier's scale); ``default at 24 px`` shows what it would buy.
Which of them classifies as well as the default needs training (a GPU job); this says which are
worth training.

    python benchmarks/architecture_cost.py [--threads 2] [--calls 70.7] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DOWN3 = ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
UP3 = ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]

CANDIDATES: dict[str, dict] = {
    "default [32,64,128] attn": {},
    "[32,64,96] attn": {"block_out_channels": [32, 64, 96], "attention_head_dim": 32},
    "[32,64,128] no attn": {
        "down_block_types": ["DownBlock2D"] * 3,
        "up_block_types": ["UpBlock2D"] * 3,
    },
    "[16,32,64] attn": {"block_out_channels": [16, 32, 64], "norm_num_groups": 8, "attention_head_dim": 32},
    "[32,64] attn (2 levels)": {
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    },
    "[24,48,96] attn": {"block_out_channels": [24, 48, 96], "norm_num_groups": 8, "attention_head_dim": 24},
    "[20,40,80] attn": {"block_out_channels": [20, 40, 80], "norm_num_groups": 4, "attention_head_dim": 20},
    "[16,64,128] attn": {"block_out_channels": [16, 64, 128], "norm_num_groups": 8},
    "default at 24 px": {"sample_size": 24},
}


def feeds(n_classes: int, size: int, n: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {
            "x": rng.standard_normal((batch, 3, size, size)).astype(np.float32),
            "t": rng.integers(20, 980, batch).astype(np.int64),
            "c": rng.integers(0, n_classes + 1, batch).astype(np.int64),
        }


def int8_onnx(unet, n_classes: int, size: int, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from napari_cytodiffusion.model.onnx_backend import export_onnx
    from napari_cytodiffusion.model.quantize import INT8_OPS

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = feeds(n_classes, size, 4, 32)

        def get_next(self):
            return next(self.it, None)

    fp32 = export_onnx(unet, work / "fp32.onnx")
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    out = work / "int8.onnx"
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=list(INT8_OPS),
    )
    return out


def ms_per_eval(fn, batch: int, seconds: float) -> float:
    """Median over repeats of the time per evaluation (after two warm-up calls)."""
    fn()
    fn()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / batch


def onnx_runner(path: Path, n_classes: int, size: int, batch: int, threads: int):
    """(callable running one ONNX Runtime batch, batch size)."""
    import torch

    from napari_cytodiffusion.model.onnx_backend import OrtUNet

    ort = OrtUNet(path, threads=threads, backend="onnx-int8")
    f = next(feeds(n_classes, size, 1, batch, seed=1))
    x, t, c = (torch.from_numpy(f[k]) for k in ("x", "t", "c"))
    return (lambda: ort(x, t, class_labels=c)), batch


def torch_runner(unet, n_classes: int, size: int, batch: int):
    """(callable running one PyTorch channels-last batch, batch size)."""
    import torch

    f = next(feeds(n_classes, size, 1, batch, seed=1))
    x = torch.from_numpy(f["x"]).contiguous(memory_format=torch.channels_last)
    t, c = torch.from_numpy(f["t"]), torch.from_numpy(f["c"])
    unet = unet.to(memory_format=torch.channels_last).eval()

    def run():
        with torch.inference_mode():
            unet(x, t, class_labels=c)

    return run, batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="UNet evaluations per ONNX call (the engine's 32)")
    ap.add_argument("--calls", type=float, default=70.7, help="UNet calls per cell (default preset: 70.7)")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds (median)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_cytodiffusion.model.architecture import DEFAULT_ARCH, build_unet
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.quantize import int8_file
    from napari_cytodiffusion.model.registry import resolve_model

    model = load_model(resolve_model("default"))
    n_classes, size = len(model.classes), model.size
    # build everything first, then time round-robin: this machine's speed drifts by up to a third
    # over minutes (other tenants), which would otherwise bias whichever candidate ran in a slow spell
    work = tempfile.TemporaryDirectory(prefix="arch_cost_")
    runners: dict[str, dict] = {}
    shipped = int8_file(model)
    if shipped is not None:
        runners["shipped default (trained)"] = {
            "int8": onnx_runner(shipped, n_classes, size, args.batch, args.threads)
        }
    info = {}
    for i, (name, change) in enumerate(CANDIDATES.items()):
        arch = dict(DEFAULT_ARCH) | change
        torch.manual_seed(0)
        unet = build_unet(n_classes, arch).eval()
        px = int(arch["sample_size"])
        info[name] = sum(p.numel() for p in unet.parameters())
        path = int8_onnx(unet, n_classes, px, Path(work.name) / str(i))
        runners[name] = {
            "int8": onnx_runner(path, n_classes, px, args.batch, args.threads),
            "torch": torch_runner(unet, n_classes, px, 64),
        }
        print(f"built {name}", flush=True)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, fns in runners.items():
            for kind, (fn, batch) in fns.items():
                times.setdefault((name, kind), []).append(ms_per_eval(fn, batch, seconds=1.5))
    work.cleanup()
    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med[(next(iter(CANDIDATES)), "int8")]
    shipped_ms = med.get(("shipped default (trained)", "int8"), base)
    rows = []
    if shipped is not None:
        print(f"shipped default (trained) int8: {shipped_ms:.2f} ms per evaluation")
    for name in CANDIDATES:
        ms8, ms32 = med[(name, "int8")], med[(name, "torch")]
        # scaled by the default architecture's untrained/shipped ratio (about 1 when the machine is steady)
        cps = 1000 / (ms8 * shipped_ms / base * args.calls)
        rows.append({"architecture": name, "params_millions": info[name] / 1e6, "int8_ms": ms8,
                     "torch_ms": ms32, "relative_to_default": ms8 / base, "cells_per_second_int8": cps})  # fmt: skip
        print(
            f"{name:28s} {info[name] / 1e6:5.2f} M params  int8 {ms8:5.2f} ms ({ms8 / base:.2f}x default)  "
            f"torch {ms32:5.2f} ms  -> {cps:.2f} cells/s at {args.calls} calls per cell"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
