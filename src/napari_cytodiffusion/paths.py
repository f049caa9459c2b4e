"""Where things live: the bundled resources and the one user cache directory.

The cache directory is ``$NAPARI_CYTODIFFUSION_CACHE`` if set, otherwise the platform's user
cache folder (e.g. ``~/.cache/napari-cytodiffusion``).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NAPARI_CYTODIFFUSION_CACHE"
PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "data"
BUNDLED_MODELS_DIR = RESOURCES_DIR / "models"
DEFAULT_MODEL_DIR = BUNDLED_MODELS_DIR / "pbc32"
DEFAULT_SMEAR_MODEL = BUNDLED_MODELS_DIR / "cellpose_smear"


def cache_dir() -> Path:
    """Return the user cache directory (created on demand)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "napari-cytodiffusion"
    path.mkdir(parents=True, exist_ok=True)
    return path
