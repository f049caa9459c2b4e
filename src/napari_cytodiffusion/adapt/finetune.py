"""Few-shot adaptation of a model to a new lab: LoRA fine-tuning and recalibration.

:func:`iter_finetune` is a generator (progress dicts, then the adapter folder) shared by the
CLI (``napari-cytodiffusion finetune``) and the *Fine-tune* widget.

The loss is the model's own denoising loss on the user's few cells (with label dropout to the
null class, so guidance keeps working), optionally plus a *classification* term on the same
quantity the classifier uses: for one shared noise, the paired errors under every class,
turned into logits in units of each timestep's calibrated spread.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import Cancelled, InputError, check_settings


@dataclass
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (stored in the adapter metadata)."""

    rank: int = 8
    alpha: float | None = None
    steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    label_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    discriminative_weight: float = 1.0
    discriminative_batch: int = 8
    train_class_embedding: bool = True
    seed: int = 0
    device: str | None = None
    augment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings a run cannot use (:class:`~napari_cytodiffusion.errors.InputError`)."""
        check_settings(
            self,
            at_least_1=("rank", "steps", "batch_size", "discriminative_batch"),
            positive=("lr", "alpha"),
            non_negative=("warmup_steps", "min_snr_gamma", "discriminative_weight"),
            fractions=("label_dropout",),
        )


def split_shots(
    labels: np.ndarray, shots: int, seed: int = 0, max_calibration_per_class: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: ``shots`` cells to train on, the rest (capped) to recalibrate on.

    A class with no more than ``shots`` cells gives all of them to training.
    """
    if shots < 1:
        raise InputError("--shots must be at least 1")
    rng = np.random.default_rng(seed)
    train, cal = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train += list(idx[:shots])
        cal += list(idx[shots : shots + max_calibration_per_class])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(cal, dtype=np.int64))


def iter_finetune(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
    data_description: dict[str, Any] | None = None,
    name: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Train a LoRA adapter on a few labelled cells, recalibrate, write the adapter folder.

    Parameters
    ----------
    model
        Loaded base :class:`~napari_cytodiffusion.model.folder.DiffusionModel`.
    images
        uint8 (N, S', S', 3) crops at the training store size (``size * 1.125``), as made by
        :func:`napari_cytodiffusion.model.train.prepare_training_data`.
    labels
        Index into ``classes`` per image.
    classes
        The base model's classes, optionally followed by new ones.
    out_dir
        Adapter folder to create (must not exist or be empty).
    calibration
        (crops (M, S, S, 3) uint8 at model size, labels) of held-out cells: refits temperature,
        P(correct) and the anomaly threshold. Without it, the base model's constants are kept.
    should_stop
        Polled every step; raises :class:`~napari_cytodiffusion.errors.Cancelled` (nothing written).

    Yields
    ------
    dict
        ``stage`` ("finetune" or "recalibrate"), ``step``, ``total``, ``loss``; the last has
        ``done=True`` and ``adapter_dir``.
    """
    import torch

    from ..model.augment import AugmentConfig, augment_batch
    from ..model.train import store_size
    from .adapter import expand_class_embedding, lora_config, save_adapter

    cfg = config or FinetuneConfig()
    cfg.check()
    base_classes = model.classes
    if list(classes[: len(base_classes)]) != list(base_classes):
        raise InputError("classes must start with the base model's classes")
    n_cls = len(classes)
    n_new = n_cls - len(base_classes)
    labels = np.asarray(labels, dtype=np.int64)
    size = model.size
    if images.ndim != 4 or images.shape[1] != store_size(size, 1.125) or images.dtype != np.uint8:
        raise InputError(f"fine-tuning crops must be uint8 (N, {store_size(size, 1.125)}, same, 3)")
    if len(images) != len(labels) or len(images) == 0:
        raise InputError("no labelled cells to fine-tune on")
    if labels.min() < 0 or labels.max() >= n_cls:
        raise InputError("labels out of range of the class list")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} exists and is not empty; choose a new folder for the adapter")
    try:
        from peft import get_peft_model
    except ImportError as exc:
        raise InputError(
            "fine-tuning needs the 'peft' package: pip install napari-cytodiffusion[finetune]"
        ) from exc

    device = resolve_device(cfg.device) if cfg.device else model.device
    torch.manual_seed(cfg.seed)
    unet = copy.deepcopy(model.unet).to(device)
    expand_class_embedding(unet, n_new)
    unet.requires_grad_(False)
    peft_unet = get_peft_model(unet, lora_config(cfg.rank, cfg.alpha, cfg.train_class_embedding))
    params = [p for p in peft_unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ac = model.alphas_cumprod().to(device)
    snr = ac / (1 - ac)
    loss_w = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
    eng = (model.metadata.calibration or {}).get("engine", {})
    disc_t = torch.as_tensor(eng.get("timesteps") or [300, 450, 600], device=device)
    disc_s = torch.as_tensor(eng.get("scales") or [1e-3] * len(disc_t), device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    aug = AugmentConfig(**cfg.augment)
    imgs = torch.from_numpy(images).to(device)
    # class-balanced sampling: every class equally often, whatever its number of shots
    present = np.unique(labels)
    by_class = {int(c): np.flatnonzero(labels == c) for c in present}
    t0 = time.perf_counter()
    hist: list[float] = []
    peft_unet.train()
    for step in range(cfg.steps):
        if should_stop is not None and should_stop():
            raise Cancelled(f"fine-tuning cancelled at step {step}; nothing was written")
        cls = rng.choice(present, size=cfg.batch_size)
        idx = np.array([rng.choice(by_class[int(c)]) for c in cls])
        x0 = augment_batch(imgs[torch.from_numpy(idx).to(device)], size, gen, aug)
        y = torch.from_numpy(cls).to(device)
        drop = torch.rand(cfg.batch_size, generator=gen).to(device) < cfg.label_dropout
        y_in = torch.where(drop, torch.full_like(y, n_cls), y)
        t = torch.randint(0, ac.numel(), (cfg.batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = ac[t][:, None, None, None]
        pred = peft_unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, class_labels=y_in).sample
        loss = ((((pred - noise) ** 2).mean(dim=(1, 2, 3))) * loss_w[t]).mean()
        if cfg.discriminative_weight > 0 and n_cls > 1:
            loss = loss + cfg.discriminative_weight * _classification_loss(
                peft_unet,
                x0[: cfg.discriminative_batch],
                y[: cfg.discriminative_batch],
                n_cls,
                ac,
                disc_t,
                disc_s,
                gen,
            )
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist.append(float(loss.detach()))
        if (step + 1) % 5 == 0 or step + 1 == cfg.steps:
            yield {
                "stage": "finetune",
                "step": step + 1,
                "total": cfg.steps,
                "loss": float(np.mean(hist[-20:])),
            }
    train_seconds = time.perf_counter() - t0
    peft_unet.eval()

    base_meta = model.metadata
    from ..colours import default_colours

    colours = list(base_meta.colours) + default_colours(list(classes)[len(base_classes) :], base_meta.colours)
    meta: dict[str, Any] = {
        "name": name or out_dir.name,
        "classes": list(classes),
        "colours": colours,
        "base_model": {
            "name": base_meta.name,
            "content_hash": base_meta.content_hash,
            "path": str(model.path) if model.path else None,
        },
        "finetune": {
            "recipe": asdict(cfg),
            "data": data_description or {},
            "class_counts": {classes[int(c)]: int((labels == c).sum()) for c in present},
            "train_seconds": round(train_seconds, 1),
            "final_loss": float(np.mean(hist[-20:])) if hist else None,
            "trainable_parameters": int(sum(p.numel() for p in params)),
        },
        "calibration": copy.deepcopy(base_meta.calibration),
    }
    if calibration is not None and len(calibration[0]):
        from ..classify.calibration import recalibrate
        from ..model.folder import DiffusionModel

        merged = copy.deepcopy(peft_unet).merge_and_unload().eval().requires_grad_(False)
        md = copy.deepcopy(base_meta)
        md.classes, md.colours = list(classes), colours
        adapted = DiffusionModel(unet=merged, scheduler=model.scheduler, metadata=md, path=None)
        cal_x, cal_y = calibration
        yield {"stage": "recalibrate", "step": 0, "total": len(cal_x), "loss": float("nan")}
        meta["calibration"], meta["validation"] = recalibrate(adapted, cal_x, np.asarray(cal_y), should_stop)
        meta["calibration"]["source"] = "recalibrated on held-out cells of the fine-tuning data"
        yield {"stage": "recalibrate", "step": len(cal_x), "total": len(cal_x), "loss": float("nan")}
    else:
        meta["calibration"]["source"] = "base model's calibration (no held-out cells were given)"
    peft_unet.to("cpu")
    path = save_adapter(peft_unet, meta, out_dir)
    yield {"stage": "done", "step": cfg.steps, "total": cfg.steps, "done": True, "adapter_dir": str(path)}


def _classification_loss(unet, x0, y, n_cls, ac, disc_t, disc_s, gen):
    """Cross-entropy of the diffusion classifier itself: one shared noise, every class."""
    import torch

    b = x0.shape[0]
    k = torch.randint(0, len(disc_t), (b,), generator=gen).to(x0.device)
    t = disc_t[k]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    a = ac[t][:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    rep = lambda v: v.repeat_interleave(n_cls, dim=0)  # noqa: E731
    labels = torch.arange(n_cls, device=x0.device).repeat(b)
    pred = unet(rep(xt), rep(t), class_labels=labels).sample
    err = ((pred - rep(noise)) ** 2).mean(dim=(1, 2, 3)).view(b, n_cls)
    logits = -(err - err.mean(dim=1, keepdim=True)) / disc_s[k][:, None]
    return torch.nn.functional.cross_entropy(logits, y)


@dataclass
class FinetuneData:
    """A user's labelled cells split into training shots and calibration cells."""

    classes: list[str]
    train_images: np.ndarray  # uint8 at the training store size
    train_labels: np.ndarray
    cal_images: np.ndarray  # uint8 at model size
    cal_labels: np.ndarray
    description: dict[str, Any]


def iter_finetune_data(
    model,
    data: FinetuneData,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`iter_finetune` on a :class:`FinetuneData` split (its calibration cells, if any, recalibrate)."""
    return iter_finetune(
        model,
        data.train_images,
        data.train_labels,
        data.classes,
        out_dir,
        config,
        calibration=(data.cal_images, data.cal_labels) if len(data.cal_labels) else None,
        data_description=data.description,
        should_stop=should_stop,
    )


def class_list(model, names: list[str], new_classes: bool) -> list[str]:
    """The model's classes, plus the data's unknown class names if ``new_classes`` (else an error)."""
    from ..io.datasets import map_classes

    known = {c.lower() for c in model.classes}
    unknown = sorted({n.strip() for n in names if n.strip().lower() not in known}, key=str.lower)
    if unknown and not new_classes:
        map_classes(names, model.classes, where="fine-tuning data")  # raises the standard message
    return list(model.classes) + unknown


def prepare_finetune_data(
    model,
    source: str | Path,
    shots: int = 10,
    split: str | None = None,
    new_classes: bool = False,
    seed: int = 0,
    max_calibration_per_class: int = 50,
) -> FinetuneData:
    """Read a folder of class folders or a CSV and split it into shots and calibration cells."""
    from ..crops import training_preprocessing
    from ..io.datasets import load_single_cell_crops, map_classes, read_labelled

    data = read_labelled(source, split=split)
    classes = class_list(model, data.classes, new_classes)
    y = map_classes(data.classes, classes, where=str(source))
    tr, ca = split_shots(y, shots, seed, max_calibration_per_class)
    pre = model.metadata.preprocessing
    tpre = training_preprocessing(pre)
    train_x = load_single_cell_crops(
        [data.paths[i] for i in tr], tpre["size"], tpre["single_cell"]["center_crop_fraction"]
    )
    cal_x = load_single_cell_crops(
        [data.paths[i] for i in ca], pre["size"], pre["single_cell"]["center_crop_fraction"]
    )
    return FinetuneData(
        classes=classes,
        train_images=train_x,
        train_labels=y[tr],
        cal_images=cal_x,
        cal_labels=y[ca],
        description={
            "source": str(source),
            "split": split,
            "shots_per_class": int(shots),
            "n_train": int(len(tr)),
            "n_calibration": int(len(ca)),
            "seed": int(seed),
        },
    )


def smear_finetune_data(
    model,
    image: np.ndarray,
    labels: np.ndarray,
    table,
    new_classes: bool = True,
    calibration_fraction: float = 0.3,
    min_calibration: int = 10,
    seed: int = 0,
    reference: float | None = None,
) -> FinetuneData:
    """The cells a user corrected on a smear (``corrected_class``) as fine-tuning data.

    ``reference``: the red-cell diameter the smear was classified at (default: estimated from the
    table, :func:`~napari_cytodiffusion.pipeline.reference_diameter`), so that crops match.

    Per class, ``calibration_fraction`` of the corrected cells (classes with at least 4) is held
    out for recalibration; if fewer than ``min_calibration`` cells would be held out, all cells
    train and the base calibration is kept.
    """
    from ..crops import crops_from_labels, training_preprocessing
    from ..pipeline import reference_diameter

    if "corrected_class" not in table:
        raise InputError("no corrected cells: set the true class of some cells first")
    corr = table["corrected_class"].fillna("").astype(str).str.strip()
    rows = table[corr != ""]
    if len(rows) < 2:
        raise InputError("correct at least two cells before fine-tuning")
    names = rows["corrected_class"].astype(str).str.strip().tolist()
    classes = class_list(model, names, new_classes)
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    y = np.array([lookup[n.lower()] for n in names], dtype=np.int64)
    rng = np.random.default_rng(seed)
    cal = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) >= 4:
            cal[idx[: int(len(idx) * calibration_fraction)]] = True
    if cal.sum() < min_calibration:
        cal[:] = False
    ref = reference if reference else reference_diameter(table)[0]
    args = (
        rows["label"].to_numpy(),
        rows[["centroid_y", "centroid_x"]].to_numpy(),
        rows["equivalent_diameter"].to_numpy(),
    )
    big, _ = crops_from_labels(
        image, labels, training_preprocessing(model.metadata.preprocessing), *args, ref
    )
    small, _ = crops_from_labels(image, labels, model.metadata.preprocessing, *args, ref)
    return FinetuneData(
        classes=classes,
        train_images=big[~cal],
        train_labels=y[~cal],
        cal_images=small[cal],
        cal_labels=y[cal],
        description={
            "source": "cells corrected in napari",
            "n_train": int((~cal).sum()),
            "n_calibration": int(cal.sum()),
            "class_counts": {classes[c]: int((y == c).sum()) for c in np.unique(y)},
        },
    )
