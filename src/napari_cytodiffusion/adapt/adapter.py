"""LoRA adapter folders: a small add-on to a base model folder, named by the base's content hash.

An adapter folder holds::

    adapter_config.json, adapter_model.safetensors   peft ``save_pretrained`` output
    cytodiffusion_adapter.json                       classes, base model (name + content hash),
                                                     recalibrated constants, recipe, data, hash

Loading merges the LoRA weights into a copy of the base UNet, so an adapted model classifies
exactly as fast as its base. Any part of the plugin that takes a model folder also takes an
adapter folder (see :func:`napari_cytodiffusion.model.registry.get_model`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError, ModelError
from ..io.atomic import make_temp_dir
from ..model.folder import read_json_object

ADAPTER_FILE = "cytodiffusion_adapter.json"
ADAPTER_FORMAT = "napari-cytodiffusion-adapter"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"

#: UNet2DModel layers that receive LoRA updates (convolutions of the resnet blocks, attention, time).
LORA_TARGETS = ["conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0"]


def is_adapter(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ADAPTER_FILE).is_file()


def adapter_hash(folder: str | os.PathLike) -> str:
    """sha256 over the adapter's peft config and weights."""
    h = hashlib.sha256()
    for rel in (PEFT_CONFIG, PEFT_WEIGHTS):
        with open(Path(folder) / rel, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_adapter_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / ADAPTER_FILE
    if not path.is_file():
        raise ModelError(f"{folder} is not an adapter folder: {ADAPTER_FILE} is missing")
    meta = read_json_object(path, "adapter metadata")
    if meta.get("format") != ADAPTER_FORMAT:
        raise ModelError(f"{path}: not a napari-cytodiffusion adapter")
    for key in ("classes", "base_model"):
        if key not in meta:
            raise ModelError(f"{path}: malformed adapter metadata (no {key!r})")
    for rel in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (folder / rel).is_file():
            raise ModelError(f"{folder}: {rel} is missing; the adapter folder is incomplete")
    return meta


def expand_class_embedding(unet, n_new: int) -> None:
    """Add ``n_new`` class rows before the null row of the UNet's class embedding (in place).

    New classes start from the null (unconditional) embedding: "a cell" before it learns its kind.
    """
    import torch

    if n_new <= 0:
        return
    old = unet.class_embedding
    n_old, dim = old.weight.shape
    new = torch.nn.Embedding(n_old + n_new, dim).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight[: n_old - 1] = old.weight[: n_old - 1]
        new.weight[n_old - 1 : n_old - 1 + n_new] = old.weight[n_old - 1]
        new.weight[-1] = old.weight[n_old - 1]
    unet.class_embedding = new
    unet.register_to_config(num_class_embeds=n_old + n_new)


def lora_config(rank: int, alpha: float | None = None, train_class_embedding: bool = True):
    from peft import LoraConfig

    return LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        target_modules=list(LORA_TARGETS),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=["class_embedding"] if train_class_embedding else None,
    )


def save_adapter(peft_unet, metadata: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write an adapter folder atomically (temp folder, then moved into place)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} exists and is not empty; choose a new folder for the adapter")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder.parent, f".{folder.name}.")
    try:
        peft_unet.save_pretrained(tmp, safe_serialization=True)
        meta = copy.deepcopy(metadata)
        meta.update(
            {
                "format": ADAPTER_FORMAT,
                "format_version": 1,
                "version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "content_hash": adapter_hash(tmp),
            }
        )
        (tmp / ADAPTER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def find_base(meta: dict[str, Any], adapter_dir: Path, base: str | os.PathLike | None = None) -> Path:
    """The base model folder of an adapter: given, recorded, bundled or cached, matched by content hash."""
    from ..model.folder import read_metadata
    from ..model.registry import available_models

    want = meta["base_model"]["content_hash"]
    candidates: list[Path] = []
    recorded = meta["base_model"].get("path")
    if base is not None:  # an explicit base is the only candidate
        candidates.append(Path(base))
    else:
        if recorded:
            p = Path(recorded)
            candidates += [p] if p.is_absolute() else [adapter_dir / p, p]
        candidates += list(available_models().values())
    for cand in candidates:
        try:
            if read_metadata(cand).content_hash == want:
                return cand
        except ModelError:
            continue
    if base is not None:
        raise ModelError(
            f"{adapter_dir}: adapter was trained on base model {meta['base_model'].get('name')}@{want[:12]}, "
            f"but {base} is a different model"
        )
    raise ModelError(
        f"{adapter_dir}: base model {meta['base_model'].get('name')}@{want[:12]} not found; "
        "pass its folder as the base model"
    )


def load_adapted_model(
    adapter_dir: str | os.PathLike, base: str | os.PathLike | None = None, device: str | None = None
):
    """Load a base model and merge an adapter into it → :class:`~napari_cytodiffusion.model.folder.DiffusionModel`.

    Raises
    ------
    ModelError
        For a missing or corrupt adapter, or a base model whose content hash differs from the
        one the adapter was trained on.
    """
    from ..model.folder import DiffusionModel, load_model

    adapter_dir = Path(adapter_dir)
    meta = read_adapter_metadata(adapter_dir)
    if meta.get("content_hash") and adapter_hash(adapter_dir) != meta["content_hash"]:
        raise ModelError(
            f"{adapter_dir}: adapter weights do not match its content hash; the folder is corrupt"
        )
    base_dir = find_base(meta, adapter_dir, base)
    base_model = load_model(base_dir)
    unet = copy.deepcopy(base_model.unet)
    n_new = len(meta["classes"]) - base_model.metadata.n_classes
    if n_new < 0 or meta["classes"][: base_model.metadata.n_classes] != base_model.classes:
        raise ModelError(f"{adapter_dir}: adapter classes do not extend the base model's classes")
    expand_class_embedding(unet, n_new)
    try:
        from peft import PeftModel

        peft_unet = PeftModel.from_pretrained(unet, adapter_dir, is_trainable=False)
        merged = peft_unet.merge_and_unload()
    except ImportError as exc:
        raise ModelError(
            "adapters need the 'peft' package: pip install napari-cytodiffusion[finetune]"
        ) from exc
    except Exception as exc:  # peft/safetensors raise assorted types on corrupt or mismatched files
        raise ModelError(f"{adapter_dir}: cannot apply adapter ({type(exc).__name__}: {exc})") from exc
    merged.eval().requires_grad_(False)
    if device:
        merged.to(device)
    md = adapted_metadata(base_model.metadata, meta, adapter_dir)
    return DiffusionModel(unet=merged, scheduler=base_model.scheduler, metadata=md, path=adapter_dir)


def adapted_metadata(base, meta: dict[str, Any], adapter_dir: str | os.PathLike):
    """The metadata of a base model (``ModelMetadata``) with an adapter's (``meta``) merged in.

    Classes, colours, calibration, validation and content hash are the adapter's; the rest (crop,
    schedule, training data, the base model's scope) the base model's, with ``extra["adapter"]``
    saying where the adapter is and how it was fine-tuned.
    """
    n_new = len(meta["classes"]) - base.n_classes
    md = copy.deepcopy(base)
    md.name = str(meta.get("name", Path(adapter_dir).name))
    md.classes = list(meta["classes"])
    md.colours = list(meta.get("colours") or md.colours + ["#999999"] * n_new)
    md.calibration = dict(meta.get("calibration") or md.calibration)
    md.validation = dict(meta.get("validation") or {})
    md.content_hash = meta.get("content_hash", "")
    md.extra = {
        **md.extra,
        "adapter": {
            "path": str(adapter_dir),
            "base_model": meta["base_model"],
            "finetune": meta.get("finetune", {}),
        },
    }
    return md
