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
    # a batch split between parallel single-threaded sessions gives the same numbers as one session
    import torch

    x = torch.randn(40, 3, model.size, model.size)
    t, c = torch.randint(0, 1000, (40,)), torch.randint(0, 3, (40,))
    one = OrtUNet(net.path, threads=2, workers=1)
    two = OrtUNet(net.path, threads=2, workers=2)
    assert one.workers == 1 and two.workers == 2 and len(two.sessions) == 2
    np.testing.assert_allclose(
        two(x, t, class_labels=c).sample.numpy(),
        one(x, t, class_labels=c).sample.numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert two(x[:3], t[:3], class_labels=c[:3]).sample.shape == (3, 3, model.size, model.size)


def test_backend_setting_is_checked(tiny_model, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(ModelError, match="is not one of auto, torch, onnx"):
        load_model(tiny_model).inference_unet()


def test_int8_unet_is_made_checked_and_preferred(tiny_model, monkeypatch, tmp_path):
    import json
    import shutil

    from napari_cytodiffusion.model.onnx_backend import backend_name
    from napari_cytodiffusion.model.quantize import INT8_FILE, quantize_model

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    monkeypatch.setenv(BACKEND_ENV, "int8")
    with pytest.raises(ModelError, match="no int8 UNet"):
        load_model(folder).inference_unet()

    model = load_model(folder)
    crops = _crops(model, n=16, seed=1)
    out = quantize_model(model, crops, n_batches=2, batch=16, seed=0, data_note="test cells")
    assert out == folder / INT8_FILE and out.is_file()
    info = json.loads((folder / "cytodiffusion.json").read_text())["extra"]["int8"]
    assert info["ops"] == ["Conv"] and info["calibration"]["inputs"] == 32
    # every convolution is int8 by default: its weights reach it through DequantizeLinear
    import onnx

    def convs(path):
        graph = onnx.load(str(path)).graph
        produced_by = {o: n.op_type for n in graph.node for o in n.output}
        return {n.name: produced_by.get(n.input[1]) for n in graph.node if n.op_type == "Conv"}

    assert info["kept_float"] == [] and set(convs(out).values()) == {"DequantizeLinear"}
    # a node kept float32 has its weights as a plain float initializer
    quantize_model(model, crops, n_batches=2, batch=16, seed=0, keep_float=["/u/conv_out/Conv"])
    kept = convs(out)
    assert kept.pop("/u/conv_out/Conv") is None and set(kept.values()) == {"DequantizeLinear"}
    info = json.loads((folder / "cytodiffusion.json").read_text())["extra"]["int8"]
    assert info["kept_float"] == ["/u/conv_out/Conv"]
    with pytest.raises(ModelError, match="not nodes of the exported UNet: /u/nope"):
        quantize_model(model, crops, n_batches=1, batch=4, keep_float=["/u/nope"])
    with pytest.raises(ModelError, match="unknown activation calibration"):
        quantize_model(model, crops, n_batches=1, batch=4, method="median")
    # the weights are untouched: the folder still loads and verifies against its content hash
    monkeypatch.setenv(BACKEND_ENV, "auto")
    q = load_model(folder)
    assert backend_name(q) == "onnx-int8"
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    f = load_model(folder)
    assert backend_name(f) == "onnx"
    cells = _crops(model, n=6, seed=2)
    a = classify_crops(f, cells, speed="full", seed=3)
    b = classify_crops(q, cells, speed="full", seed=3)
    # int8 convolutions: the errors move a little, not much (per-class evidence of the same cells)
    assert np.abs(a.evidence - b.evidence).max() < 0.25 * np.abs(a.evidence).max() + 1e-3
    assert np.array_equal(classify_crops(q, cells, speed="full", seed=3).pred, b.pred)  # deterministic

    # constants fitted on int8 errors replace the float32 ones when (and only when) int8 runs
    from napari_cytodiffusion.classify.classifier import calibration_for

    for m in (q, f):
        m.metadata.calibration = {"temperature": 2.0, "engine": {"drop_z": 2.5}}
        m.metadata.extra["int8"]["classifier_calibration"] = {"temperature": 3.0}
    assert calibration_for(q) == {"temperature": 3.0, "engine": {"drop_z": 2.5}}
    assert calibration_for(f)["temperature"] == 2.0
    # a preset's own constants come from the same block as the backend's, never across backends
    f.metadata.calibration["presets"] = {"accurate": {"temperature": 5.0}}
    q.metadata.calibration["presets"] = {"accurate": {"temperature": 5.0}}
    assert calibration_for(f, "accurate")["temperature"] == 5.0
    assert calibration_for(f, "fast")["temperature"] == 2.0 and "presets" not in calibration_for(f)
    assert calibration_for(q, "accurate")["temperature"] == 3.0  # float32 preset not used for int8
    q.metadata.extra["int8"]["classifier_calibration"]["presets"] = {"accurate": {"temperature": 7.0}}
    assert calibration_for(q, "accurate")["temperature"] == 7.0

    # an int8 file made for other weights is not used (auto falls back to float32 ONNX)
    meta = json.loads((folder / "cytodiffusion.json").read_text())
    meta["extra"]["int8"]["source_content_hash"] = "0" * 64
    (folder / "cytodiffusion.json").write_text(json.dumps(meta))
    monkeypatch.setenv(BACKEND_ENV, "auto")
    assert backend_name(load_model(folder)) == "onnx"
    # a corrupt file is an error, not a silent fallback
    meta["extra"]["int8"]["source_content_hash"] = info["source_content_hash"]
    (folder / "cytodiffusion.json").write_text(json.dumps(meta))
    with open(out, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(folder).inference_unet()


def test_int8_constants_are_used_only_where_the_cpu_computes_the_int8_unet_alike(
    tiny_model, monkeypatch, tmp_path, caplog
):
    """int8 constants fitted on another machine's numerics: ``auto`` falls back to float32."""
    import json
    import logging
    import shutil

    from napari_cytodiffusion.model import int8_numerics
    from napari_cytodiffusion.model.onnx_backend import backend_name
    from napari_cytodiffusion.model.quantize import quantize_model

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    model = load_model(folder)
    quantize_model(model, _crops(model, n=16, seed=1), n_batches=2, batch=16, seed=0)
    monkeypatch.setenv(BACKEND_ENV, "int8")
    net = load_model(folder).inference_unet()
    rec = int8_numerics.record(net, model.size, model.metadata.n_classes)
    assert len(rec["values"]) == int8_numerics.N_VALUES and rec["host"]["machine"]
    assert rec["values"] == int8_numerics.record(net, model.size, model.metadata.n_classes)["values"]

    def store(values):
        meta = json.loads((folder / "cytodiffusion.json").read_text())
        meta["extra"]["int8"]["numerics"] = {**rec, "values": values}
        (folder / "cytodiffusion.json").write_text(json.dumps(meta))

    monkeypatch.setenv(BACKEND_ENV, "auto")
    store(rec["values"])  # fitted here: the int8 network runs
    assert backend_name(load_model(folder)) == "onnx-int8"
    store([v + 0.01 for v in rec["values"]])  # fitted on a CPU that computes it differently
    with caplog.at_level(logging.WARNING, logger="napari_cytodiffusion.model.onnx_backend"):
        other = load_model(folder)
        assert backend_name(other) == "onnx"
    assert "computes the int8 UNet differently" in caplog.text and abs(other.int8_deviation - 0.01) < 1e-6
    monkeypatch.setenv(BACKEND_ENV, "int8")  # asked for: used, with the warning
    assert backend_name(load_model(folder)) == "onnx-int8"


def test_refit_int8_constants_refits_the_chosen_presets_and_keeps_the_others(
    tiny_model, tiny_dataset, monkeypatch, tmp_path
):
    """``scripts/refit_int8_constants.py`` on a real int8 dump: all presets at once, then ``--only`` one,
    with the null label's gap where ``--null`` names it and each profile's kind kept by default."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.quantize import quantize_model

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    model = load_model(folder)
    quantize_model(model, _crops(model, n=16, seed=1), n_batches=2, batch=16, seed=0)
    ls = read_labelled(tiny_dataset)
    crops = single_cell_crops([read_image(p) for p in ls.paths], model.metadata.preprocessing)
    labels = np.array([model.classes.index(c) for c in ls.classes])
    cache = tmp_path / "cache.npz"
    np.savez(cache, cal_images=crops, cal_labels=labels, classes=np.array(model.classes))

    def run(script, *args):
        return subprocess.run([sys.executable, str(root / script), *args], capture_output=True, text=True,
                              timeout=600, cwd=root)  # fmt: skip

    done = run("benchmarks/full_grid_errors.py", "--model", str(folder), "--cache", str(cache), "--int8",
               "--views", "2", "--split", "cal", "--per-class", "100000", "--out", str(tmp_path / "g.npz"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    meta_file = folder / "cytodiffusion.json"
    meta = json.loads(meta_file.read_text())
    # a calibrated model (the int8 block replaces the float32 one's constants) whose int8 block has two presets
    meta["calibration"] = {"temperature": 1.0}
    meta["extra"]["int8"]["classifier_calibration"] = {"presets": {"accurate": {}, "fast": {}}}
    meta_file.write_text(json.dumps(meta))

    def refit(*args):
        done = run("scripts/refit_int8_constants.py", "--model", str(folder), "--cache", str(cache),
                   "--errors", str(tmp_path / "g.npz"), *args)  # fmt: skip
        block = json.loads(meta_file.read_text())["extra"]["int8"]
        return done, block

    done, first = refit("--null", "fast")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dump checked against this machine" in done.stdout
    cal = first["classifier_calibration"]
    assert cal["anomaly"]["gaps"] != "null" and cal["presets"]["fast"]["anomaly"]["gaps"] == "null"
    assert cal["presets"]["accurate"]["anomaly"]["gaps"] != "null" and first["numerics"]["values"]
    # --only balanced: balanced moves to the null label's gap, the presets stay as they were
    done, second = refit("--only", "balanced", "--null", "balanced")
    assert done.returncode == 0, done.stderr[-2000:]
    again = second["classifier_calibration"]
    assert again["anomaly"]["gaps"] == "null" and again["presets"] == cal["presets"]
    assert second["numerics"] == first["numerics"]
    # without --null each profile keeps its kind
    done, third = refit("--only", "fast", "accurate")
    assert done.returncode == 0, done.stderr[-2000:]
    kinds = {s: b["anomaly"]["gaps"] for s, b in third["classifier_calibration"]["presets"].items()}
    assert kinds["fast"] == "null" and kinds["accurate"] != "null"
    assert third["classifier_calibration"]["anomaly"] == again["anomaly"]
    # a profile on the null label's gap cannot be refitted from a dump without the null label: one line, no write
    dump = dict(np.load(tmp_path / "g.npz"))
    dump["errors"] = dump["errors"][:, :-1]
    np.savez(tmp_path / "g_without_null.npz", **dump)
    done = run("scripts/refit_int8_constants.py", "--model", str(folder), "--cache", str(cache),
               "--errors", str(tmp_path / "g_without_null.npz"), "--only", "fast")  # fmt: skip
    assert done.returncode != 0 and "was made --without-null" in done.stderr
    assert json.loads(meta_file.read_text())["extra"]["int8"] == third
    # --only refuses constants fitted on another machine's numerics
    meta = json.loads(meta_file.read_text())
    meta["extra"]["int8"]["numerics"]["values"] = [
        v + 0.01 for v in meta["extra"]["int8"]["numerics"]["values"]
    ]
    meta_file.write_text(json.dumps(meta))
    done, _ = refit("--only", "fast")
    assert done.returncode != 0 and "another machine's numerics" in done.stderr
