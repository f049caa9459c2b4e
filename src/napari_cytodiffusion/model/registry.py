"""Finding models: the bundled default, user folders, and a cache of official downloads.

``resolve_model("default")`` is the model shipped in the package (``pbc32``); every other model
folder shipped in the package is found by its folder name. A path is a user folder.
A bare name is otherwise looked up in ``$NAPARI_CYTODIFFUSION_CACHE/models/NAME``; if it is an
official model (listed in :data:`OFFICIAL_MODELS` with a URL and sha256) that is not cached
yet, :func:`download_official` fetches it: to a temp file, verified, then moved into place.
Nothing here touches the network unless a download is explicitly needed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path

from ..errors import ModelError
from ..io.atomic import make_temp_dir
from ..paths import BUNDLED_MODELS_DIR, DEFAULT_MODEL_DIR, cache_dir

#: Official weights a release may publish: name -> {"url": ..., "sha256": ...} (zip of a model folder).
OFFICIAL_MODELS: dict[str, dict[str, str]] = {}


def models_cache() -> Path:
    p = cache_dir() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def bundled_models() -> dict[str, Path]:
    """Name -> folder of the classifier models shipped in the package, ``default`` first.

    The default model is listed once, as ``default``; its folder name (``pbc32``) resolves too.
    """
    out = {"default": DEFAULT_MODEL_DIR}
    for p in sorted(BUNDLED_MODELS_DIR.iterdir()):
        if p != DEFAULT_MODEL_DIR and (p / "cytodiffusion.json").is_file():
            out[p.name] = p
    return out


def available_models() -> dict[str, Path]:
    """Name -> folder of every model usable without a download (bundled, then cached)."""
    out = bundled_models()
    for p in sorted(models_cache().iterdir()):
        if (p / "cytodiffusion.json").is_file() or (p / "cytodiffusion_adapter.json").is_file():
            if p.name != DEFAULT_MODEL_DIR.name:  # a bundled name is never shadowed by the cache
                out.setdefault(p.name, p)
    return out


def resolve_model(spec: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Turn a model name or folder into a model folder path.

    With ``download=False`` an official model that is not cached yet is an error instead of a
    download (for callers that must never touch the network, e.g. a widget describing a choice).
    """
    if spec is None or str(spec) in ("", "default", DEFAULT_MODEL_DIR.name):
        return DEFAULT_MODEL_DIR
    path = Path(spec).expanduser()
    if path.exists() or os.sep in str(spec) or str(spec).startswith("."):
        return path
    bundled = bundled_models().get(str(spec))
    if bundled is not None:
        return bundled
    cached = models_cache() / str(spec)
    if cached.is_dir():
        return cached
    if str(spec) in OFFICIAL_MODELS:
        if not download:
            raise ModelError(f"model {spec!r} is not downloaded yet (it would go to {cached})")
        return download_official(str(spec))
    raise ModelError(
        f"unknown model {spec!r}: give a model folder, 'default', or one of {', '.join(available_models())}"
    )


def download_official(name: str, timeout: float = 30.0) -> Path:
    """Download, verify (sha256) and unpack an official model into the cache."""
    import urllib.error
    import urllib.request

    entry = OFFICIAL_MODELS[name]
    target = models_cache() / name
    tmpdir = make_temp_dir(models_cache(), f".{name}.")
    try:
        tmp = tmpdir / "model.zip"
        try:
            with urllib.request.urlopen(entry["url"], timeout=timeout) as r, open(tmp, "wb") as fh:
                shutil.copyfileobj(r, fh)
        except (urllib.error.URLError, OSError) as exc:
            raise ModelError(
                f"cannot download model {name!r} ({exc}); you seem to be offline. Copy the model folder "
                f"to {target} or use the bundled 'default' model"
            ) from exc
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise ModelError(
                f"download of {name!r} is corrupt (sha256 {digest[:12]} != {entry['sha256'][:12]})"
            )
        with zipfile.ZipFile(tmp) as zf:
            zf.extractall(tmpdir / "unpacked")
        os.replace(tmpdir / "unpacked", target)
        return target
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@lru_cache(maxsize=4)
def _cached_load(path: str, device: str | None, mtime: float):
    from ..adapt.adapter import is_adapter, load_adapted_model
    from .folder import load_model

    if is_adapter(path):
        return load_adapted_model(path, device=device)
    return load_model(path, device=device)


def get_model(spec: str | os.PathLike | None = None, device: str | None = None):
    """Load (and cache in memory) a model by name or folder (a model folder or a LoRA adapter folder).

    ``device``: ``None`` (the CPU), ``"auto"`` (a CUDA GPU when there is one) or a torch device
    name, checked by :func:`~napari_cytodiffusion.devices.resolve_device`.
    """
    from ..adapt.adapter import ADAPTER_FILE

    if device is None:
        device = "cpu"  # one cached copy for None and "cpu"
    else:
        from ..devices import resolve_device

        device = str(resolve_device(device))
    path = resolve_model(spec)
    meta = path / ADAPTER_FILE if (path / ADAPTER_FILE).is_file() else path / "cytodiffusion.json"
    mtime = meta.stat().st_mtime if meta.exists() else 0.0
    return _cached_load(str(path), device, mtime)
