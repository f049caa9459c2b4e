"""The model folder format shared by every part of the plugin.

A model folder holds::

    unet/       diffusers ``save_pretrained`` output (config.json + safetensors)
    scheduler/  diffusers scheduler config
    cytodiffusion.json   metadata (classes, colours, preprocessing, data, recipe,
                         validation metrics, calibration, version, content hash)

:func:`load_model` checks all of it and never touches the network.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ModelError
from ..io.atomic import make_temp_dir

METADATA_FILE = "cytodiffusion.json"

FORMAT_NAME = "napari-cytodiffusion-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def default_preprocessing(size: int) -> dict[str, Any]:
    """How cells are cropped and normalised for a model of ``size`` pixels."""
    return {
        "size": int(size),
        "normalisation": "rgb uint8 / 127.5 - 1 (range [-1, 1])",
        "single_cell": {
            "method": "centre square crop of this fraction of the shorter side, then area resize",
            "center_crop_fraction": 0.65,
        },
        "smear": {
            "method": (
                "square crop centred on the cell's centroid; side = field_rbc_diameters x the "
                "median equivalent diameter of the smear's whole red cells (not cut by the image "
                "border, not stained), so crops have the physical scale of the training images; at "
                "least cell diameter / max_cell_fraction; pixels outside the image are reflected"
            ),
            # the training crops' side in those red cells on PBC's images (benchmarks/crop_scale.py)
            "field_rbc_diameters": 2.865,
            "max_cell_fraction": 0.85,
        },
    }


@dataclass
class ModelMetadata:
    """Parsed ``cytodiffusion.json``."""

    name: str
    classes: list[str]
    colours: list[str]
    preprocessing: dict[str, Any]
    schedule: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    content_hash: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def null_class_id(self) -> int:
        return len(self.classes)

    @property
    def size(self) -> int:
        return int(self.preprocessing["size"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "content_hash": self.content_hash,
            "classes": [
                {"id": i, "name": n, "colour": c}
                for i, (n, c) in enumerate(zip(self.classes, self.colours, strict=True))
            ],
            "null_class_id": self.null_class_id,
            "preprocessing": self.preprocessing,
            "schedule": self.schedule,
            "training": self.training,
            "validation": self.validation,
            "calibration": self.calibration,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "metadata") -> ModelMetadata:
        try:
            if d.get("format") != FORMAT_NAME:
                raise ModelError(f"{where}: not a napari-cytodiffusion model (format={d.get('format')!r})")
            if int(d.get("format_version", 0)) > FORMAT_VERSION:
                raise ModelError(
                    f"{where}: model format {d['format_version']} is newer than this plugin "
                    f"understands ({FORMAT_VERSION}); update napari-cytodiffusion"
                )
            classes = [c["name"] for c in d["classes"]]
            colours = [c.get("colour", "#888888") for c in d["classes"]]
            if len(classes) < 2 or len(set(c.lower() for c in classes)) != len(classes):
                raise ModelError(f"{where}: needs at least two distinct class names")
            return cls(
                name=str(d["name"]),
                classes=classes,
                colours=colours,
                preprocessing=dict(d["preprocessing"]),
                schedule=dict(d["schedule"]),
                training=dict(d.get("training", {})),
                validation=dict(d.get("validation", {})),
                calibration=dict(d.get("calibration", {})),
                version=str(d.get("version", "")),
                content_hash=str(d.get("content_hash", "")),
                created=str(d.get("created", "")),
                extra=dict(d.get("extra", {})),
            )
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: malformed metadata ({type(exc).__name__}: {exc})") from exc


class DiffusionModel:
    """A loaded model: UNet, scheduler and metadata.

    A model read by :func:`load_model` builds its diffusers UNet and scheduler on first use of
    :attr:`unet` or :attr:`scheduler`: classifying with ONNX Runtime needs neither (only
    :meth:`alphas_cumprod` and the weights' files), and importing diffusers costs ~2.5 s.
    """

    def __init__(
        self,
        unet: Any = None,
        scheduler: Any = None,
        metadata: ModelMetadata | None = None,
        path: Path | None = None,
        *,
        device: str | None = None,
        verified: bool = False,
    ) -> None:
        if metadata is None:
            raise ModelError("a model needs its metadata")
        if unet is None and path is None:
            raise ModelError("a model needs a UNet or a folder to load it from")
        self._unet = unet
        self._scheduler = scheduler
        self.metadata = metadata
        self.path = Path(path) if path is not None else None
        if device not in (None, "cpu"):
            from ..devices import resolve_device

            device = str(resolve_device(device))
        self._device = device or "cpu"
        #: the folder's weights were checked against the metadata's content hash when loaded
        self.verified = verified and unet is None

    def __repr__(self) -> str:
        state = "loaded" if self._unet is not None else "not loaded yet"
        return f"DiffusionModel({self.short_id()}, {self.path}, UNet {state})"

    @property
    def unet(self):
        """The diffusers ``UNet2DModel`` (built from the folder on first use)."""
        if self._unet is None:
            self._unet = _build_unet(self.path, self._device)
        return self._unet

    @property
    def scheduler(self):
        """The diffusers ``DDPMScheduler`` of training (built from the folder on first use)."""
        if self._scheduler is None:
            from diffusers import DDPMScheduler

            try:
                self._scheduler = DDPMScheduler.from_pretrained(
                    self.path / "scheduler", local_files_only=True
                )
            except Exception as exc:  # diffusers raises assorted types on bad configs
                raise ModelError(
                    f"{self.path}: cannot load the scheduler ({type(exc).__name__}: {exc})"
                ) from exc
        return self._scheduler

    def scheduler_config(self) -> dict[str, Any]:
        """The training scheduler's settings (read from the folder without diffusers when possible)."""
        if self._scheduler is not None:
            return dict(self._scheduler.config)
        return read_json_object(self.path / "scheduler" / "scheduler_config.json")

    def alphas_cumprod(self):
        """Cumulative alphas of the training schedule (float32 tensor on the CPU)."""
        from .architecture import alphas_cumprod

        if self._scheduler is not None:
            return alphas_cumprod(self._scheduler)
        return alphas_cumprod(self.scheduler_config())

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def size(self) -> int:
        return self.metadata.size

    @property
    def device(self):
        import torch

        if self._unet is not None:
            return next(self._unet.parameters()).device
        return torch.device(self._device)

    def inference_unet(self):
        """The network for inference: ONNX Runtime on a CPU when installed, else :attr:`unet`.

        See :mod:`napari_cytodiffusion.model.onnx_backend`; training always uses :attr:`unet`.
        """
        from .onnx_backend import inference_unet

        return inference_unet(self)

    def class_index(self, name: str) -> int:
        """Index of a class name (case-insensitive); raises a clear error otherwise."""
        from ..errors import InputError

        lookup = {c.lower(): i for i, c in enumerate(self.classes)}
        try:
            return lookup[str(name).strip().lower()]
        except KeyError:
            raise InputError(f"unknown class {name!r}; this model knows: {', '.join(self.classes)}") from None

    def short_id(self) -> str:
        return f"{self.metadata.name}@{self.metadata.content_hash[:12]}"


def content_hash(folder: str | os.PathLike) -> str:
    """sha256 over the UNet weights and config (what determines the model's outputs)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for rel in ("unet/config.json", f"unet/{WEIGHTS_FILE}"):
        file_sha256(folder / rel, h)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, h=None) -> str:
    """sha256 of a file's bytes (fed into ``h`` when given, e.g. to hash several files as one)."""
    h = h if h is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(
    unet: Any,
    scheduler: Any,
    metadata: ModelMetadata,
    folder: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write a model folder atomically (built in a temp folder, then moved into place).

    Raises
    ------
    ModelError
        If ``folder`` exists, is not empty and ``overwrite`` is False.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ModelError(f"{folder} exists and is not empty; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder.parent, f".{folder.name}.")
    try:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        meta = copy.deepcopy(metadata)
        meta.content_hash = content_hash(tmp)
        meta.version = __version__
        meta.created = meta.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
        if folder.exists():
            # replace only the model's own entries; other content (checkpoints) stays
            for entry in ("unet", "scheduler", METADATA_FILE):
                old = folder / entry
                if old.is_dir():
                    backup = folder / f".{entry}.old"
                    shutil.rmtree(backup, ignore_errors=True)
                    os.replace(old, backup)
                    os.replace(tmp / entry, old)
                    shutil.rmtree(backup, ignore_errors=True)
                else:
                    os.replace(tmp / entry, old)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metadata.content_hash = meta.content_hash
    return folder


def read_metadata(folder: str | os.PathLike) -> ModelMetadata:
    """Read and validate a model folder's metadata without loading weights."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder; a model is a folder with {METADATA_FILE}")
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise ModelError(f"{folder} is not a napari-cytodiffusion model: {METADATA_FILE} is missing")
    data = read_json_object(meta_path, "metadata")
    return ModelMetadata.from_dict(data, where=str(meta_path))


def write_metadata(folder: str | os.PathLike, metadata: ModelMetadata) -> None:
    """Rewrite the metadata of an existing folder (e.g. after calibration), atomically."""
    from ..io.atomic import write_json

    folder = Path(folder)
    metadata.content_hash = content_hash(folder)
    write_json(folder / METADATA_FILE, metadata.to_dict())


def load_model(folder: str | os.PathLike, device: str | None = None, verify: bool = True) -> DiffusionModel:
    """Load a model folder, checking its metadata, weights and hash.

    The files are checked now; the diffusers UNet and scheduler are built on first use (see
    :class:`DiffusionModel`).

    Parameters
    ----------
    folder
        Path of a model folder.
    device
        Torch device ("cpu", "cuda", ...). Defaults to CPU.
    verify
        Check the content hash of the weights against the metadata.
    """
    folder = Path(folder)
    meta = read_metadata(folder)
    for rel in ("unet/config.json", f"unet/{WEIGHTS_FILE}", "scheduler/scheduler_config.json"):
        if not (folder / rel).is_file():
            raise ModelError(f"{folder}: {rel} is missing; the model folder is incomplete")
    if verify and meta.content_hash:
        actual = content_hash(folder)
        if actual != meta.content_hash:
            raise ModelError(
                f"{folder}: weights do not match the metadata's content hash "
                f"(expected {meta.content_hash[:12]}, found {actual[:12]}); the folder is corrupt or was edited"
            )
    unet_config = read_json_object(folder / "unet" / "config.json")
    read_json_object(folder / "scheduler" / "scheduler_config.json")
    _check_safetensors(folder / "unet" / WEIGHTS_FILE)
    n_embeds = unet_config.get("num_class_embeds")
    if n_embeds != meta.n_classes + 1:
        raise ModelError(
            f"{folder}: metadata lists {meta.n_classes} classes but the UNet has {n_embeds} class "
            f"embeddings (expected classes + 1 null class)"
        )
    if unet_config.get("sample_size") != meta.size:
        raise ModelError(
            f"{folder}: metadata crop size {meta.size} does not match the UNet ({unet_config.get('sample_size')})"
        )
    return DiffusionModel(
        metadata=meta, path=folder, device=device, verified=bool(verify and meta.content_hash)
    )


def read_json_object(path: str | os.PathLike, what: str = "JSON") -> dict[str, Any]:
    """A JSON object from ``path``; :class:`ModelError` naming the file when unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} must be a JSON object")
    return data


def _check_safetensors(path: Path) -> None:
    """Cheap check that a weights file is a whole safetensors file (header and data length)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if path.stat().st_size != 8 + n + end:
            raise ValueError("truncated or padded data")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"{path}: not a valid safetensors weights file ({exc})") from exc


def _build_unet(folder: Path, device: str | None):
    """The diffusers UNet of a model folder, ready for inference on ``device``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from diffusers import UNet2DModel
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True)
    except Exception as exc:  # diffusers/safetensors raise assorted types on corrupt files
        raise ModelError(f"{folder}: cannot load weights ({type(exc).__name__}: {exc})") from exc
    unet.eval().requires_grad_(False)
    if device:
        unet.to(device)
    if next(unet.parameters()).device.type == "cpu":
        import torch

        # oneDNN convolutions are ~1.2x faster in NHWC on CPU (measured: 6.1 vs 6.9 ms per call)
        unet.to(memory_format=torch.channels_last)
    return unet
