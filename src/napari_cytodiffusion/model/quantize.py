"""Int8 version of a model's UNet for fast CPU inference (optional: needs ``[onnx]``).

The classifier's signal is a small difference between the noise-prediction errors of two classes,
so the quantization must not blur it. Measured on the default model (``benchmarks/unet_int8.py``):
int8 convolutions *and* matrix products cost 4 points of accuracy, int8 convolutions alone
(weights per output channel, activations calibrated on noised cells) none. This module makes
the latter: static QDQ quantization of the ``Conv`` operators of the exported ONNX graph, with
activation ranges observed on noised training cells at random timesteps and class labels, the way
the classifier feeds the network.

Nodes can be left in float32 (``keep_float``) and the activation ranges chosen otherwise
(``method``). Tried on the distilled ``pbc32-fast`` (session 19): keeping the output convolution
float32 raised the calibration hold-out's accuracy by 0.4 points (0.950 → 0.954; float32 0.955), but
on PBC val the ``balanced`` preset moved by −0.1 points (0.934) and ``accurate`` by −0.6 (0.941):
no real gain, so every convolution stays int8 by default. The input convolution in float32
(0.945), both (0.952) and percentile ranges (0.947) did no better on the hold-out.

The file lives in the model folder (``onnx/unet_int8.onnx``) and is recorded in the metadata's
``extra["int8"]`` with the content hash of the weights it was made from and its own sha256, so a
file that does not belong to the weights beside it is never used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .folder import file_sha256

INT8_FILE = "onnx/unet_int8.onnx"
#: ONNX operator types quantized (see the module docstring for why only convolutions).
INT8_OPS = ("Conv",)
#: ONNX nodes of the exported UNet left in float32 by default (none; see the module docstring).
KEEP_FLOAT: tuple[str, ...] = ()


def calibration_feeds(
    model, crops: np.ndarray, n_batches: int = 16, batch: int = 64, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """UNet inputs for activation calibration: noised ``crops`` at random timesteps and labels.

    Parameters
    ----------
    model
        The loaded :class:`~napari_cytodiffusion.model.folder.DiffusionModel`.
    crops
        (N, S, S, 3) uint8 cell crops at the model's size (training cells, not evaluation cells).
    n_batches, batch
        How many batches of how many inputs.
    seed
        Seed of the draws (same seed, same calibration).
    """
    if crops.ndim != 4 or crops.shape[1:] != (model.size, model.size, 3):
        raise ModelError(f"calibration crops must be (N, {model.size}, {model.size}, 3); got {crops.shape}")
    rng = np.random.default_rng(seed)
    ab = model.alphas_cumprod().numpy()
    n_t = len(ab)
    x0 = np.moveaxis(crops.astype(np.float32) / 127.5 - 1.0, -1, 1)
    for _ in range(n_batches):
        i = rng.integers(0, len(x0), batch)
        t = rng.integers(int(0.02 * n_t), int(0.98 * n_t), batch)
        c = rng.integers(0, model.metadata.n_classes + 1, batch)  # the null class too (guidance)
        eps = rng.standard_normal(x0[i].shape, dtype=np.float32)
        a = ab[t].astype(np.float32)[:, None, None, None]
        x = np.sqrt(a) * x0[i] + np.sqrt(1 - a) * eps
        yield {"x": x.astype(np.float32), "t": t.astype(np.int64), "c": c.astype(np.int64)}


def quantize_model(
    model,
    crops: np.ndarray,
    n_batches: int = 16,
    batch: int = 64,
    seed: int = 0,
    data_note: str = "",
    keep_float: Sequence[str] = KEEP_FLOAT,
    method: str = "minmax",
) -> Path:
    """Write ``onnx/unet_int8.onnx`` into the model's folder and record it in the metadata.

    Parameters
    ----------
    model
        A loaded model with a folder (``model.path``); adapters are not quantized.
    crops
        Training cell crops for the activation ranges (see :func:`calibration_feeds`).
    n_batches, batch, seed
        Calibration draws.
    data_note
        Where the calibration cells came from (stored in the metadata).
    keep_float
        ONNX node names of the exported UNet left in float32 (e.g. ``"/u/conv_out/Conv"``); a
        name that is not a node of the graph is an error.
    method
        How activation ranges are chosen: ``"minmax"`` (over the calibration inputs),
        ``"percentile"`` (99.999th percentile of the absolute values) or ``"entropy"``.

    Returns
    -------
    Path
        The written file.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..io.atomic import atomic_path
    from .folder import read_metadata, write_metadata
    from .onnx_backend import export_onnx

    if model.path is None or not (Path(model.path) / "unet").is_dir():
        raise ModelError("only a model folder (not an adapter or an unsaved model) can be quantized")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ModelError(f"unknown activation calibration {method!r}; use one of {sorted(methods)}")
    folder = Path(model.path)
    feeds = list(calibration_feeds(model, crops, n_batches, batch, seed))

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out = folder / INT8_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cytodiffusion_int8_") as work:
        fp32 = export_onnx(model.unet, Path(work) / "unet_fp32.onnx")
        pre = Path(work) / "unet_pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        _check_nodes(pre, keep_float)
        with atomic_path(out) as tmp:
            quantize_static(
                str(pre),
                str(tmp),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(INT8_OPS),
                nodes_to_exclude=list(keep_float),
                calibrate_method=methods[method],
            )
    meta = read_metadata(folder)
    meta.extra = dict(meta.extra)
    meta.extra["int8"] = {
        "file": INT8_FILE,
        "sha256": file_sha256(out),
        "source_content_hash": meta.content_hash,
        "ops": list(INT8_OPS),
        "kept_float": list(keep_float),
        "method": "ONNX Runtime static quantization, QDQ, int8 weights per output channel, uint8 "
        f"activations (ranges: {method} over the calibration inputs)",
        "calibration": {
            "cells": int(len(crops)),
            "inputs": int(n_batches * batch),
            "seed": int(seed),
            "data": data_note,
        },
    }
    write_metadata(folder, meta)
    model.metadata.extra = meta.extra
    return out


def _check_nodes(path: Path, names: Sequence[str]) -> None:
    import onnx

    nodes = {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}
    unknown = [n for n in names if n not in nodes]
    if unknown:
        convs = sorted(n for n in nodes if n.endswith("/Conv"))
        raise ModelError(
            f"not nodes of the exported UNet: {', '.join(unknown)}; its convolutions are "
            f"{', '.join(convs[:3])}, …, {convs[-1] if convs else ''}"
        )


def int8_file(model) -> Path | None:
    """The model folder's int8 UNet if it exists and belongs to these weights, else None."""
    if model.path is None or not getattr(model, "verified", False):
        return None  # only for weights checked against the content hash the file was made from
    info: dict[str, Any] = model.metadata.extra.get("int8") or {}
    if not info:
        return None
    path = Path(model.path) / info.get("file", INT8_FILE)
    if not path.is_file() or info.get("source_content_hash") != model.metadata.content_hash:
        return None
    if file_sha256(path) != info.get("sha256"):
        raise ModelError(
            f"{path}: does not match the sha256 in the metadata; the file is corrupt or was edited"
        )
    return path
