"""What a user installing from a package index gets: the wheel, built and installed offline, must
carry the napari manifest, the shipped models (loadable, their content hashes intact) and the sample."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
from pathlib import Path
import napari_cytodiffusion as pkg
site = Path(sys.argv[1]).resolve()
assert Path(pkg.__file__).resolve().is_relative_to(site), pkg.__file__
from importlib.metadata import distribution
assert Path(distribution("napari-cytodiffusion").locate_file("")).resolve() == site
from npe2 import PluginManifest
manifest = PluginManifest.from_distribution("napari-cytodiffusion")
from napari_cytodiffusion.model.registry import bundled_models, get_model
names = list(bundled_models())
loaded = {n: get_model(n).metadata for n in names}  # loading checks every file and the content hash
from napari_cytodiffusion.segmentation.cellpose_seg import load_segmenter
seg = load_segmenter()
from napari_cytodiffusion.sample_data import make_sample_data
(image, _, _), (points, _, _) = make_sample_data()
print(json.dumps({
    "widgets": sorted(w.display_name for w in manifest.contributions.widgets),
    "models": {n: m.classes for n, m in loaded.items()},
    "segmenter": seg.name,
    "sample": [list(image.shape), len(points)],
}))
"""


@pytest.mark.slow
def test_the_installed_wheel_carries_the_manifest_models_and_sample(tmp_path):
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from setuptools import build_meta; print(build_meta.build_wheel({str(dist)!r}))",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = dist / build.stdout.strip().splitlines()[-1]
    assert wheel.stat().st_size < 40_000_000  # the models stay small enough to ship
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["widgets"] == sorted(
        ["Segment cells", "Classify cells", "Analyze smears", "Generate cells", "Train model"]
    )
    assert set(got["models"]) == {"default", "pbc32-fast"}
    assert len(got["models"]["default"]) == 8 and got["models"]["default"] == got["models"]["pbc32-fast"]
    assert got["segmenter"].startswith("smear")
    assert got["sample"][0][-1] == 3 and got["sample"][1] == 8
