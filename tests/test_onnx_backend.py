"""The ONNX Runtime backend gives the same results as PyTorch, is exported once, and is optional."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from napari_cytodiffusion.classify.classifier import classify_crops
from napari_cytodiffusion.errors import ModelError
from napari_cytodiffusion.generate.sampling import GenerateParams, generate
from napari_cytodiffusion.model.folder import load_model
from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV, OrtUNet


def _crops(model, n=6, seed=0):
    rng = np.random.default_rng(seed)
    s = model.size
    yy, xx = np.mgrid[0:s, 0:s]
    out = np.full((n, s, s, 3), 230, np.uint8)
    for i in range(n):
        disc = (yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (s / 4) ** 2
        out[i][disc] = (200, 80, 90) if i % 2 else (90, 50, 150)
        out[i] = np.clip(out[i] + rng.normal(0, 6, out[i].shape), 0, 255).astype(np.uint8)
    return out


def test_onnx_runtime_matches_pytorch_and_is_exported_once(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(BACKEND_ENV, "torch")
    ref_model = load_model(tiny_model)
    assert ref_model.inference_unet() is ref_model.unet
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    model = load_model(tiny_model)
    net = model.inference_unet()
    assert isinstance(net, OrtUNet) and net.path.parent == tmp_path / "cache" / "onnx"
    crops = _crops(model)
    a = classify_crops(ref_model, crops, speed="full", seed=3)
    b = classify_crops(model, crops, speed="full", seed=3)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_allclose(a.evidence, b.evidence, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(a.p_correct, b.p_correct, atol=1e-4)
    # generation through the same network: same seeds, (nearly) the same pixels
    params = GenerateParams(steps=5, guidance=2.0)
    ga = generate(ref_model, [0, 1], [7, 8], params)
    gb = generate(model, [0, 1], [7, 8], params)
    assert np.abs(ga.astype(int) - gb.astype(int)).max() <= 2
    # a second load of the same weights reuses the exported file
    mtime = net.path.stat().st_mtime_ns
    again = load_model(tiny_model).inference_unet()
    assert again.path == net.path and net.path.stat().st_mtime_ns == mtime
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 1  # no temporary files left


def test_backend_setting_is_checked(tiny_model, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(ModelError, match="is not one of auto, torch, onnx"):
        load_model(tiny_model).inference_unet()
