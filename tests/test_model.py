import json
import shutil
import time

import numpy as np
import pytest

from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.errors import InputError, ModelError
from napari_cytodiffusion.model.folder import load_model, read_metadata
from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR


def test_default_model_loads_offline_with_metadata(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    m = load_model(DEFAULT_MODEL_DIR)
    assert time.perf_counter() - t0 < 30  # generous; the real figure is in benchmarks/
    assert m.classes == [
        "basophil",
        "eosinophil",
        "erythroblast",
        "ig",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ]
    assert m.unet.config.num_class_embeds == 9
    meta = m.metadata
    assert "CC BY 4.0" in json.dumps(meta.training)
    assert {"temperature", "p_correct", "anomaly", "engine"} <= set(meta.calibration)
    assert meta.validation["balanced_accuracy"] > 0.9
    assert len(meta.content_hash) == 64


def test_tiny_model_roundtrip(tiny_model):
    m = load_model(tiny_model)
    assert m.classes == ["redcell", "violet"]
    assert m.size == 16
    assert (tiny_model / "checkpoints" / "last.pt").is_file()


def test_corrupt_weights_are_detected(tiny_model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="content hash"):
        load_model(bad)


def test_missing_and_mismatched_folders(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="missing"):
        read_metadata(tmp_path / "empty")
    mism = tmp_path / "mism"
    shutil.copytree(tiny_model, mism)
    meta = json.loads((mism / "cytodiffusion.json").read_text())
    meta["classes"].append({"id": 2, "name": "extra", "colour": "#000000"})
    (mism / "cytodiffusion.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="class embeddings"):
        load_model(mism, verify=False)


def test_train_cli_and_resume(tiny_dataset, tmp_path):
    out = tmp_path / "m"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_dataset),
                "--out",
                str(out),
                "--arch",
                "tiny",
                "--steps",
                "6",
                "--batch-size",
                "4",
                "--checkpoint-every",
                "3",
            ]
        )
        == 0
    )
    meta = read_metadata(out)
    assert meta.training["steps_done"] == 6
    # the finished model got its int8 UNet (onnxruntime is in the test extras), made for these weights
    from napari_cytodiffusion.model.onnx_backend import onnx_available

    if onnx_available():
        assert (out / meta.extra["int8"]["file"]).is_file()
        assert meta.extra["int8"]["source_content_hash"] == meta.content_hash
    # a second run without --resume must refuse to overwrite
    assert (
        main(["train", "--data", str(tiny_dataset), "--out", str(out), "--arch", "tiny", "--steps", "6"]) == 2
    )
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), "--resume", "--steps", "9"]) == 0
    meta = read_metadata(out)
    assert meta.training["steps_done"] == 9
    if onnx_available():  # re-made for the new weights, not left stale
        assert meta.extra["int8"]["source_content_hash"] == meta.content_hash
    # --steps below the steps already done is refused, and the model is left as it was
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), "--resume", "--steps", "5"]) == 2
    assert read_metadata(out).content_hash == meta.content_hash


def test_resume_without_steps_keeps_the_runs_length(tiny_dataset, tmp_path):
    out = tmp_path / "m"
    base = ["train", "--data", str(tiny_dataset), "--out", str(out), "--no-int8"]
    run = [*base, "--arch", "tiny", "--steps", "7", "--batch-size", "4", "--checkpoint-every", "3"]
    assert main([*run, "--max-seconds", "0"]) == 0  # the time limit stops it after its first step
    assert read_metadata(out).training["steps_done"] == 1
    # resumed without --steps: it ends at the 7 steps it was started with, not at the CLI's default
    assert main([*base, "--resume"]) == 0
    assert read_metadata(out).training["steps_done"] == 7


def test_init_from_continues_a_models_training_with_a_decaying_rate(tiny_model, tiny_dataset, tmp_path):
    from napari_cytodiffusion.model.train import TrainConfig, learning_rate

    base = load_model(tiny_model)
    out = tmp_path / "cont"
    args = ["train", "--data", str(tiny_dataset), "--out", str(out), "--init-from", str(tiny_model)]
    opts = ["--steps", "8", "--batch-size", "4", "--lr", "1e-3", "--min-lr", "1e-5", "--no-int8"]
    assert main([*args, *opts]) == 0
    meta = read_metadata(out)
    # the architecture came from the base model (the CLI's --arch default is the 32 px network)
    assert meta.training["recipe"]["arch"] == base.metadata.training["recipe"]["arch"]
    assert meta.training["recipe"]["min_lr"] == 1e-5
    init = meta.training["init_from"]
    assert init["content_hash"] == base.metadata.content_hash
    assert init["steps_done"] == base.metadata.training["steps_done"]
    # it started from the base's weights: after 8 small steps it is far nearer to them than a new network
    from napari_cytodiffusion.model.architecture import build_unet

    fresh = build_unet(2, base.metadata.training["recipe"]["arch"]).state_dict()
    ref = base.unet.state_dict()

    def dist(sd):
        return sum(float((sd[k] - ref[k]).pow(2).sum()) for k in ref)

    moved = dist(load_model(out).unet.state_dict())
    assert 0 < moved < 0.01 * dist(fresh)
    # the rate warms up, then falls on a cosine to min_lr at the last step
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5)
    assert learning_rate(TrainConfig(steps=100, lr=1e-3, warmup_steps=10), 99) == 1e-3
    # a model of other classes cannot start the run; the folder is left uncreated
    other = tmp_path / "other_data"
    for name in ("redcell", "blue"):
        shutil.copytree(tiny_dataset / "redcell", other / name)
    assert (
        main(["train", "--data", str(other), "--out", str(tmp_path / "x"), "--init-from", str(tiny_model)])
        == 2
    )
    assert not (tmp_path / "x").exists()
    # from Python, a run whose architecture differs from the model's is refused before any step
    from napari_cytodiffusion.model.architecture import DEFAULT_ARCH
    from napari_cytodiffusion.model.train import prepare_training_data, train

    data = prepare_training_data(tiny_dataset, 32)
    wrong = TrainConfig(steps=2, batch_size=2, arch=dict(DEFAULT_ARCH), init_from=str(tiny_model), int8=False)
    with pytest.raises(InputError, match="architecture differs"):
        list(train(data, tmp_path / "y", wrong))


def test_training_is_deterministic(tiny_dataset, tmp_path):
    from napari_cytodiffusion.model.architecture import TINY_ARCH
    from napari_cytodiffusion.model.train import TrainConfig, prepare_training_data, train

    data = prepare_training_data(tiny_dataset, 16)
    losses = []
    for name in ("a", "b"):
        cfg = TrainConfig(steps=10, batch_size=4, arch=dict(TINY_ARCH), warmup_steps=2)
        losses.append([ev["loss"] for ev in train(data, tmp_path / name, cfg) if "loss" in ev])
    assert np.allclose(losses[0], losses[1])


def test_training_precision_follows_the_hardware_and_float32_can_be_asked_for(tiny_dataset, tmp_path):
    import torch

    from napari_cytodiffusion.devices import bf16_autocast_fast

    # bfloat16 autocast only where it is native: a CUDA GPU, or a CPU with AVX-512 BF16 / AMX
    assert bf16_autocast_fast(torch.device("meta")) is False
    auto = "bfloat16 autocast" if bf16_autocast_fast(torch.device("cpu")) else "float32"
    base = ["train", "--data", str(tiny_dataset), "--arch", "tiny", "--steps", "3", "--batch-size", "4"]
    for name, extra, expected in (("auto", [], auto), ("f32", ["--float32"], "float32")):
        assert main([*base, "--out", str(tmp_path / name), "--no-int8", "--device", "cpu", *extra]) == 0
        training = read_metadata(tmp_path / name).training
        assert training["precision"] == expected and training["recipe"]["mixed_precision"] == (not extra)
        assert np.isfinite(training["final_loss"])
    # a resumed run may be asked for float32 (a hardware choice, like the device); otherwise it keeps its own
    resume = ["train", "--data", str(tiny_dataset), "--resume", "--no-int8", "--device", "cpu"]
    assert main([*resume, "--out", str(tmp_path / "auto"), "--steps", "4"]) == 0
    assert read_metadata(tmp_path / "auto").training["precision"] == auto
    assert main([*resume, "--out", str(tmp_path / "auto"), "--steps", "5", "--float32"]) == 0
    assert read_metadata(tmp_path / "auto").training["precision"] == "float32"


def test_unknown_class_in_csv(tiny_dataset, tmp_path):
    from napari_cytodiffusion.io.datasets import map_classes

    with pytest.raises(InputError, match="unknown class"):
        map_classes(["redcell", "Dragon"], ["redcell", "violet"])
    assert list(map_classes(["REDCELL", "violet"], ["redcell", "violet"])) == [0, 1]


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_computed_without_diffusers_matches_diffusers(schedule):
    import torch

    from napari_cytodiffusion.model.architecture import alphas_cumprod, build_scheduler

    sched = build_scheduler({"beta_schedule": schedule, "num_train_timesteps": 1000})
    assert torch.equal(alphas_cumprod(dict(sched.config)), alphas_cumprod(sched))


def test_model_builds_its_unet_on_first_use_and_checks_weights_at_load(tiny_model, tmp_path):

    model = load_model(tiny_model)
    assert model._unet is None and "not loaded yet" in repr(model)
    assert model.device.type == "cpu" and model.alphas_cumprod().shape == (1000,)
    assert model.unet.config.num_class_embeds == model.metadata.n_classes + 1  # built now
    # a truncated weights file is caught at load even without the content-hash check
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ModelError, match="safetensors"):
        load_model(bad, verify=False)


def test_recipe_cache_slimmed_as_jpeg_decodes_to_the_same_crops(tmp_path):
    """The train split carried to a GPU machine as JPEGs: same labels and shapes, crops within JPEG loss."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_default_model import load_train_split
    from train_default_model import main as recipe

    yy, xx = np.mgrid[0:36, 0:36]
    images = np.stack(
        [np.stack([(xx * 7 + k) % 256, (yy * 5 + 3 * k) % 256, ((xx + yy) * 3) % 256], -1) for k in range(6)]
    ).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    cache = tmp_path / "cache.npz"
    np.savez(cache, classes=np.array(["a", "b", "c"]), train_images=images, train_labels=labels,
             val_images=images[:1], val_labels=labels[:1])  # fmt: skip
    assert recipe(["slim", "--cache", str(cache), "--out", str(tmp_path / "lossless.npz")]) == 0
    classes, x, y = load_train_split(tmp_path / "lossless.npz")
    assert classes == ["a", "b", "c"] and np.array_equal(x, images) and np.array_equal(y, labels)
    assert "val_images" not in np.load(tmp_path / "lossless.npz").files
    out = tmp_path / "jpeg.npz"
    assert recipe(["slim", "--cache", str(cache), "--out", str(out), "--jpeg-quality", "95"]) == 0
    assert "train_images" not in np.load(out).files
    classes, x, y = load_train_split(out)
    assert classes == ["a", "b", "c"] and np.array_equal(y, labels)
    assert x.shape == images.shape and x.dtype == np.uint8
    mse = float(((x.astype(float) - images) ** 2).mean())
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 30
    left = sorted(f.name for f in tmp_path.iterdir())  # no temporary file left behind
    assert left == ["cache.npz", "jpeg.npz", "lossless.npz"]
    with pytest.raises(SystemExit) as bad:  # argparse: exit 2, before any work
        recipe(["slim", "--cache", str(cache), "--out", str(tmp_path / "q0.npz"), "--jpeg-quality", "0"])
    assert bad.value.code == 2 and not (tmp_path / "q0.npz").exists()


def test_run_settings_are_checked_in_python_too():
    """The configs refuse what a run cannot use, also when changed after they were made."""
    from napari_cytodiffusion.adapt.finetune import FinetuneConfig
    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.model.distill import DistillConfig
    from napari_cytodiffusion.model.train import TrainConfig

    with pytest.raises(InputError, match="ema decay must be from 0 up to"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(InputError, match="t_min < t_max"):
        DistillConfig(t_min=900, t_max=100)
    with pytest.raises(InputError, match="lr must be positive"):
        FinetuneConfig(lr=0)
    cfg = TrainConfig(steps=None)  # a resumed run keeps its checkpoint's length
    cfg.batch_size = 0
    with pytest.raises(InputError, match="batch size must be at least 1, got 0"):
        cfg.check()
