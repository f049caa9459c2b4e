"""Training the class-conditional DDPM: a generator that yields progress and runs headless.

Recipe: AdamW, linear warm-up, EMA weights, Min-SNR-gamma loss weighting for epsilon
prediction, label dropout to the null class (for classifier-free guidance), class-balanced
batches, on-the-fly augmentation, periodic checkpoints and exact resume.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..colours import default_colours
from ..devices import bf16_autocast_fast, resolve_device
from ..errors import Cancelled, InputError, ModelError, check_settings
from .architecture import DEFAULT_ARCH, ScheduleConfig, alphas_cumprod, build_scheduler, build_unet
from .augment import AugmentConfig, augment_batch
from .folder import ModelMetadata, default_preprocessing, save_model

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in the model metadata as the recipe)."""

    #: total steps of the run; on resume, ``None`` keeps the checkpoint's total
    steps: int | None = 20000
    batch_size: int = 128
    lr: float = 6e-4
    #: after the warm-up the learning rate stays at ``lr`` (None) or falls on a cosine to this
    min_lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 500
    ema_decay: float = 0.9995
    label_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    class_balance: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1000
    store_margin: float = 1.125
    arch: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_ARCH))
    augment: dict[str, Any] = field(default_factory=lambda: asdict(AugmentConfig()))
    #: bfloat16 autocast where it is fast: a CUDA GPU, or a CPU with AVX-512 BF16 / AMX (~1.6x faster steps)
    mixed_precision: bool = True
    device: str | None = None
    max_seconds: float | None = None
    #: when training finishes, also write the int8 UNet for fast CPU inference (needs ``[onnx]``)
    int8: bool = True
    #: a model (name or folder) whose UNet starts the run, as network and EMA: its classes and
    #: architecture must match (continue a model's training, e.g. with a decaying learning rate)
    init_from: str | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings a run cannot use (:class:`~napari_cytodiffusion.errors.InputError`)."""
        check_run_settings(
            self,
            at_least_1=("batch_size", "checkpoint_every", "store_margin"),
            positive=("lr",),
            non_negative=(
                "max_seconds",
                "min_lr",
                "weight_decay",
                "warmup_steps",
                "min_snr_gamma",
                "class_balance",
            ),
            fractions=("ema_decay", "label_dropout"),
        )

    @property
    def size(self) -> int:
        return int(self.arch["sample_size"])


def check_run_settings(config: Any, **rules: tuple[str, ...]) -> None:
    """:func:`~napari_cytodiffusion.errors.check_settings` of a training run's config; its ``steps``
    may be 0 only when it starts from another model's weights (``init_from``: a copy of them)."""
    least = 0 if config.init_from else 1
    if config.steps is not None and config.steps < least:
        raise InputError(f"steps must be at least {least}, got {config.steps}")
    check_settings(config, **rules)


@dataclass
class TrainingData:
    """Crops ready for training: uint8 (N, S', S', 3) at ``size * store_margin``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise InputError("training images must be uint8 (N, H, W, 3)")
        if len(self.images) != len(self.labels):
            raise InputError("training images and labels differ in length")
        if len(self.images) == 0:
            raise InputError("no training images")
        counts = np.bincount(self.labels, minlength=len(self.classes))
        if (counts == 0).any():
            empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            raise InputError(f"classes without training images: {', '.join(empty)}")


def store_size(size: int, margin: float) -> int:
    return int(round(size * margin))


def prepare_training_data(
    source: str | os.PathLike,
    size: int,
    center_crop_fraction: float = 0.65,
    store_margin: float = 1.125,
    split: str | None = None,
    classes: list[str] | None = None,
    workers: int = 2,
) -> TrainingData:
    """Read a folder of class folders or a CSV into :class:`TrainingData`.

    Images are centre-cropped to ``center_crop_fraction * store_margin`` of their side and
    resized to ``size * store_margin`` pixels, leaving room for rotation and scale jitter.
    """
    from ..io.datasets import load_single_cell_crops, map_classes, read_labelled

    labelled = read_labelled(source, split=split)
    names = classes or labelled.class_names()
    if len(names) < 2:
        raise InputError(f"{source}: need at least two classes to train, found {len(names)}")
    labels = map_classes(labelled.classes, names, where=str(source))
    frac = min(1.0, center_crop_fraction * store_margin)
    images = load_single_cell_crops(labelled.paths, store_size(size, store_margin), frac, workers)
    return TrainingData(
        images=images,
        labels=labels,
        classes=list(names),
        description={"source": str(source), "split": split, "n_images": len(labels)},
    )


def learning_rate(config: Any, step: int, warm_start: int = 0) -> float:
    """Linear warm-up, then constant (``min_lr`` None) or a cosine from ``lr`` down to ``min_lr``.

    ``config`` has ``lr``, ``min_lr``, ``warmup_steps`` and ``steps``; ``warm_start`` is the step
    the warm-up (and the cosine) starts from: a resumed run with fresh optimizer moments warms again.
    """
    warm = max(1, config.warmup_steps)
    done = step + 1 - warm_start
    if done < warm:
        return config.lr * max(done, 0) / warm
    if config.min_lr is None:
        return config.lr
    progress = min(1.0, (done - warm) / max(1, config.steps - warm_start - warm))
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _init_weights(config: TrainConfig, classes: list[str]) -> tuple[dict, dict]:
    """State dict and provenance of the model named by ``config.init_from``, checked against the run."""
    from .registry import get_model

    base = get_model(config.init_from, device="cpu")
    if list(base.classes) != list(classes):
        raise InputError(
            f"cannot start from {config.init_from}: its classes {list(base.classes)} differ from the data's {classes}"
        )
    base_arch = base.metadata.training.get("recipe", {}).get("arch")
    if base_arch is not None and dict(base_arch) != dict(config.arch):
        raise InputError(f"cannot start from {config.init_from}: its architecture differs from the run's")
    t = base.metadata.training
    provenance = {
        "name": base.metadata.name,
        "content_hash": base.metadata.content_hash,
        "steps_done": t.get("steps_done"),
        "train_seconds": t.get("train_seconds"),
        "hardware": t.get("hardware"),
        "recipe": t.get("recipe"),
    }
    return copy.deepcopy(base.unet.state_dict()), provenance


def _class_sampler(labels: np.ndarray, n_classes: int, balance: float):
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    class_p = counts ** (1.0 - balance)
    class_p /= class_p.sum()
    by_class = np.argsort(labels, kind="stable")  # image indices grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return class_p, by_class, starts, counts.astype(np.int64)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint, with a clear error when it is missing or unreadable."""
    import torch

    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load: pickle/zip errors of many types
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc


def resumed_config(saved: Any, config: Any | None, step_done: int) -> Any:
    """A resumed run's configuration: the checkpoint's, with what a resume may change.

    Only the run's length (``config.steps``: the new total, at least the steps already done;
    ``None`` keeps the checkpoint's), the time limit and the device come from ``config``, and
    float32 when ``config`` asks for it (``mixed_precision=False``, a hardware choice like the device).
    Everything else (learning rate and its schedule, batch, seeds) stays as the run began,
    so that a resumed run continues the same run.
    """
    if config is None:
        return saved
    if config.steps is not None:
        if int(config.steps) < step_done:
            raise InputError(
                f"the run has already done {step_done} steps; --steps {config.steps} would end it "
                f"before that (leave --steps out to keep its total of {saved.steps})"
            )
        saved.steps = int(config.steps)
    saved.max_seconds, saved.device = config.max_seconds, config.device
    if not getattr(config, "mixed_precision", True):
        saved.mixed_precision = False
    return saved


class LoopState:
    """Step counter, loss history, time limit and progress events of a training loop.

    Shared by :func:`train` and :func:`~napari_cytodiffusion.model.distill.distill`; restored
    from a checkpoint's ``step``, ``elapsed`` and ``loss_hist`` when resuming.
    """

    def __init__(
        self,
        total: int,
        checkpoint_every: int,
        max_seconds: float | None,
        state: dict[str, Any] | None = None,
    ) -> None:
        state = state or {}
        self.total, self.every, self.max_seconds = int(total), int(checkpoint_every), max_seconds
        self.step = int(state.get("step", 0))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.loss_hist = list(state.get("loss_hist", []))
        self.t0 = time.perf_counter()
        self._last_t, self._last_step = self.t0, self.step
        self.timed_out = False

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def mean_loss(self, last: int = 100) -> float:
        return float(np.mean(self.loss_hist[-last:])) if self.loss_hist else float("nan")

    def running(self) -> bool:
        return self.step < self.total and not self.timed_out

    def advance(self, loss: float, lr: float) -> tuple[bool, dict[str, Any] | None]:
        """Count a finished step; return (write a checkpoint now?, progress event or None)."""
        self.step += 1
        self.loss_hist.append(loss)
        if len(self.loss_hist) > 5000:
            del self.loss_hist[:-5000]
        now = time.perf_counter()
        self.timed_out = self.max_seconds is not None and now - self.t0 >= self.max_seconds
        last = self.step == self.total or self.timed_out
        event = None
        if self.step % 10 == 0 or last:
            sps = (self.step - self._last_step) / max(1e-9, now - self._last_t)
            self._last_t, self._last_step = now, self.step
            event = {
                "step": self.step,
                "total": self.total,
                "loss": self.mean_loss(),
                "lr": lr,
                "steps_per_second": sps,
                "elapsed": self.elapsed_before + now - self.t0,
            }
        return self.step % self.every == 0 or last, event

    def final_events(self, model_dir: Path) -> dict[str, Any]:
        return {
            "step": self.step,
            "total": self.total,
            "loss": self.mean_loss(),
            "done": True,
            "finished": self.step >= self.total,
            "model_dir": str(model_dir),
        }


def train(
    data: TrainingData,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Train a model and write it to ``out_dir``; yields progress dictionaries.

    Each yielded dict has ``step``, ``total``, ``loss`` (running mean), ``lr`` and
    ``steps_per_second``; the last one has ``done=True`` and ``model_dir``.

    Parameters
    ----------
    data
        Training crops and labels.
    out_dir
        Model folder to create. Checkpoints go to ``out_dir/checkpoints``.
    config
        Hyper-parameters; ignored in favour of the checkpoint's when resuming.
    resume
        Continue from ``out_dir/checkpoints/last.pt``.
    metadata
        Extra metadata fields (``name``, ``training`` entries such as data licence).
    should_stop
        Polled every step; if it returns True, a checkpoint is written and
        :class:`~napari_cytodiffusion.errors.Cancelled` is raised.
    """
    import torch

    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        config = resumed_config(TrainConfig(**state["config"]), config, int(state["step"]))
        if list(state["classes"]) != list(data.classes):
            raise InputError(f"checkpoint classes {state['classes']} differ from the data's {data.classes}")
    else:
        config = copy.deepcopy(config) if config is not None else TrainConfig()
        if config.steps is None:  # a new run needs a length
            config.steps = TrainConfig.steps
        if out_dir.exists() and any(out_dir.iterdir()):
            raise InputError(f"{out_dir} exists and is not empty; use --resume or a new folder")
    expected = store_size(config.size, config.store_margin)
    if data.images.shape[1] != expected:
        raise InputError(f"training crops are {data.images.shape[1]} px, expected {expected}")

    config.check()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    unet = build_unet(len(data.classes), config.arch).to(device)
    scheduler = build_scheduler(ScheduleConfig())
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    # noise, timesteps and label dropout are drawn on the training device (fast on a GPU)
    dev_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    np_rng = np.random.default_rng(config.seed)
    warm_start = 0
    init_provenance = state.get("init_from") if state is not None else None
    if state is None and config.init_from:
        weights, init_provenance = _init_weights(config, list(data.classes))
        unet.load_state_dict(weights)
        ema.load_state_dict(weights)
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        if state.get("opt") is not None:
            opt.load_state_dict(state["opt"])
        else:  # a slimmed checkpoint (weights only): fresh optimizer moments, re-warm
            warm_start = int(state["step"])
        gen.set_state(state["torch_gen"])
        if state.get("dev_gen") is not None and state.get("dev_gen_device") == device.type:
            dev_gen.set_state(state["dev_gen"])
        np_rng.bit_generator.state = state["np_rng"]
    loop = LoopState(config.steps, config.checkpoint_every, config.max_seconds, state)

    ac = alphas_cumprod(scheduler).to(device)
    snr = ac / (1 - ac)
    loss_w = torch.clamp(snr, max=config.min_snr_gamma) / snr
    images = torch.from_numpy(data.images).to(device)
    n_classes = len(data.classes)
    class_p, by_class, starts, counts = _class_sampler(data.labels, n_classes, config.class_balance)
    aug_cfg = AugmentConfig(**config.augment)
    use_amp = config.mixed_precision and bf16_autocast_fast(device)
    meta_extra = dict(metadata or {})

    def save_checkpoint(elapsed: float) -> None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "torch_gen": gen.get_state(),
                "dev_gen": dev_gen.get_state(),
                "dev_gen_device": device.type,
                "np_rng": np_rng.bit_generator.state,
                "step": loop.step,
                "elapsed": elapsed,
                "config": asdict(config),
                "classes": list(data.classes),
                "loss_hist": loop.loss_hist,
                "init_from": init_provenance,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)

    def export(elapsed: float) -> Path:
        pre = default_preprocessing(config.size)
        training_meta = {
            "data": data.description,
            "class_counts": dict(
                zip(data.classes, np.bincount(data.labels, minlength=n_classes).tolist(), strict=True)
            ),
            "recipe": asdict(config),
            "steps_done": loop.step,
            "train_seconds": round(elapsed, 1),
            "hardware": _hardware(device),
            "precision": "bfloat16 autocast" if use_amp else "float32",
            "final_loss": loop.mean_loss(200) if loop.loss_hist else None,
        }
        if init_provenance is not None:  # the weights' earlier training, which these steps continue
            training_meta["init_from"] = init_provenance
        training_meta.update(meta_extra.get("training", {}))
        meta = ModelMetadata(
            name=str(meta_extra.get("name", out_dir.name)),
            classes=list(data.classes),
            colours=default_colours(list(data.classes)),
            preprocessing=pre,
            schedule=ScheduleConfig().to_dict(),
            training=training_meta,
        )
        cpu_ema = copy.deepcopy(ema).to("cpu")
        return save_model(cpu_ema, scheduler, meta, out_dir, overwrite=True)

    unet.train()
    while loop.running():
        if should_stop is not None and should_stop():
            save_checkpoint(loop.elapsed())
            raise Cancelled(f"training stopped at step {loop.step}; resume with --resume")
        b = config.batch_size
        cls = np_rng.choice(n_classes, size=b, p=class_p)
        pick = (np_rng.random(b) * counts[cls]).astype(np.int64)
        idx = by_class[starts[cls] + pick]
        x0 = augment_batch(images[torch.from_numpy(idx).to(device)], config.size, gen, aug_cfg)
        y = torch.from_numpy(cls).to(device)
        drop = torch.rand(b, generator=dev_gen, device=device) < config.label_dropout
        y = torch.where(drop, torch.full_like(y, n_classes), y)
        t = torch.randint(0, ac.numel(), (b,), generator=dev_gen, device=device)
        noise = torch.randn(x0.shape, generator=dev_gen, device=device)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = learning_rate(config, loop.step, warm_start)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = unet(xt, t, class_labels=y).sample
        per = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per * loss_w[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(config.ema_decay, (1 + loop.step) / (10 + loop.step))
        with torch.no_grad():
            ema_p = [p for p in ema.parameters()]
            torch._foreach_lerp_(ema_p, [p.detach() for p in unet.parameters()], 1 - decay)
        save, event = loop.advance(float(loss.detach()), lr)
        if save:
            save_checkpoint(loop.elapsed())
        if event is not None:
            yield event
    path = export(loop.elapsed())
    if loop.step >= config.steps and config.int8:
        yield {"step": loop.step, "total": config.steps, "loss": loop.mean_loss(), "stage": "int8"}
        _write_int8(path, data, config)
    yield loop.final_events(path)


def _write_int8(model_dir: Path, data: TrainingData, config: TrainConfig, n_cells: int = 256) -> None:
    """Quantize the finished model's UNet, calibrated on its own training cells (if ONNX is installed)."""
    from .folder import load_model
    from .onnx_backend import onnx_available
    from .quantize import quantize_model

    if not onnx_available():
        log.info("onnxruntime/onnx not installed: no int8 UNet written (PyTorch is used instead)")
        return
    rng = np.random.default_rng(config.seed)
    idx = np.sort(rng.permutation(len(data.images))[:n_cells])
    m = (data.images.shape[1] - config.size) // 2
    crops = np.ascontiguousarray(data.images[idx, m : m + config.size, m : m + config.size])
    try:
        quantize_model(
            load_model(model_dir, device="cpu"), crops, seed=config.seed, data_note="training cells"
        )
    except Exception as exc:  # the float model is complete and usable; int8 is only a speed-up
        log.warning(
            "could not write the int8 UNet (%s: %s); the model is used in float32", type(exc).__name__, exc
        )


def _hardware(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"
