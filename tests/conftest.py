"""Shared fixtures. napari tests need an OpenGL display: if none is set and Xvfb is installed,
a virtual display is started here (Mesa renders into it); otherwise those tests are skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the one cache directory (exported ONNX networks, downloaded models) goes to a fresh folder
os.environ.setdefault("NAPARI_CYTODIFFUSION_CACHE", tempfile.mkdtemp(prefix="cytodiffusion-cache-"))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_XVFB = None


def _start_xvfb() -> None:
    global _XVFB
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return
    r, w = os.pipe()
    _XVFB = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    num = b""
    while not num.endswith(b"\n"):
        chunk = os.read(r, 16)
        if not chunk:
            break
        num += chunk
    os.close(r)
    if num.strip():
        os.environ["DISPLAY"] = f":{num.decode().strip()}"
        os.environ["QT_QPA_PLATFORM"] = "xcb"


_start_xvfb()
HAS_DISPLAY = bool(os.environ.get("DISPLAY"))


_EXIT_STATUS = 0


def pytest_sessionfinish(session, exitstatus):
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


def pytest_unconfigure(config):
    """Last hook: stop our Xvfb, then leave without Python's finalisation when Qt was loaded.

    Tearing down Qt/OpenGL objects during interpreter shutdown can segfault after every test has
    passed (seen once in CI-like runs here); the report is already written and the exit status is kept.
    """
    if _XVFB is not None:
        _XVFB.terminate()
    import sys

    if "PyQt6" in sys.modules or "PyQt5" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS)


def pytest_collection_modifyitems(config, items):
    skip_gui = pytest.mark.skip(
        reason="no display and no Xvfb: install xvfb (see README) to run napari tests"
    )
    for item in items:
        if "make_napari_viewer" in getattr(item, "fixturenames", ()) and not HAS_DISPLAY:
            item.add_marker(skip_gui)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present (only in the development checkout and CI)")
    return SHARED


def _disc_image(rng, colour, size=48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), 230, np.uint8)
    r = rng.uniform(8, 12)
    cy, cx = size / 2 + rng.normal(0, 1, 2)
    m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    img[m] = np.clip(np.array(colour) + rng.normal(0, 8, (m.sum(), 3)), 0, 255)
    return img


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A folder of two classes of synthetic single-cell images (red and violet discs)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    for name, colour in (("redcell", (200, 80, 90)), ("violet", (90, 50, 150))):
        (root / name).mkdir()
        for i in range(12):
            Image.fromarray(_disc_image(rng, colour)).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny real diffusers model trained for a few steps in the test session."""
    from napari_cytodiffusion.model.architecture import TINY_ARCH
    from napari_cytodiffusion.model.train import TrainConfig, prepare_training_data, train

    out = tmp_path_factory.mktemp("models") / "tiny"
    cfg = TrainConfig(
        steps=40,
        batch_size=16,
        arch=dict(TINY_ARCH),
        warmup_steps=5,
        checkpoint_every=20,
        lr=2e-3,
        int8=False,  # float32 everywhere; the int8 path has its own tests (test_onnx_backend.py)
    )
    data = prepare_training_data(tiny_dataset, cfg.size, store_margin=cfg.store_margin)
    for _ in train(data, out, cfg):
        pass
    return out
