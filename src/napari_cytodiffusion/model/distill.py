"""Distilling a trained model into a narrower UNet (a generator that yields progress, headless).

The classifier's cost is the UNet's cost per evaluation, and the first level's width at full
resolution dominates it (``benchmarks/architecture_cost.py``: widths [16, 32, 64] cost 0.4x
the default [32, 64, 128]). Training the narrow UNet from scratch costs as much as training
the default; distilling it is cheaper and targets what the classifier needs: the student
learns the teacher's noise prediction for the *same* noisy cell under several class labels
(the cell's own class, other classes and the null class), so the differences between the
classes' errors, which decide the call, are learnt directly rather than only the true class.

The student is a normal model folder (same classes, preprocessing and schedule as the
teacher); its metadata names the teacher by content hash. Checkpoints and exact resume work
as in :mod:`.train`.

With ``class_weight > 0`` the student is also trained as the classifier it will be used as:
each cell is predicted under *every* class (and the null class) with the same noise, the
per-class errors at that timestep become logits (``-error / s(t)``, ``s(t)`` the teacher's
calibrated spread of paired error differences, so a logit gap of 1 is one paired standard
deviation) and a cross-entropy pushes the own class's error below the others'. The teacher
matching stays as the anchor that keeps the student a denoiser (generation, anomaly score).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import Cancelled, InputError, ModelError
from .architecture import build_unet, with_widths
from .augment import AugmentConfig, augment_batch
from .folder import DiffusionModel, ModelMetadata, save_model
from .train import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    LoopState,
    TrainConfig,
    TrainingData,
    _class_sampler,
    _hardware,
    _write_int8,
    check_run_settings,
    learning_rate,
    load_checkpoint,
    resumed_config,
)


@dataclass
class DistillConfig:
    """Hyper-parameters of a distillation run (stored in the student's metadata)."""

    #: total steps of the run; on resume, ``None`` keeps the checkpoint's total
    steps: int | None = 20000
    #: cells per step; each is noised once and predicted under ``labels_per_cell`` class labels
    batch_size: int = 32
    labels_per_cell: int = 4
    lr: float = 1e-3
    #: the learning rate falls from ``lr`` to this on a cosine over the run (after the warm-up);
    #: ``None`` keeps it constant. At a constant 1e-3 the student plateaus (see docs/measurements.md).
    min_lr: float | None = 1e-5
    weight_decay: float = 0.01
    warmup_steps: int = 200
    ema_decay: float = 0.999
    #: timesteps are drawn uniformly from this range (the classifier's grid lies in 150-900)
    t_min: int = 60
    t_max: int = 960
    #: share of the extra labels that are the null class (keeps guided sampling working)
    null_share: float = 0.1
    #: weight of the plain denoising loss against the true noise (true class only)
    denoise_weight: float = 0.1
    #: extra weight on the part of the error that differs between a cell's labels (the
    #: teacher's prediction minus its mean over the labels). The plain loss is dominated by
    #: the class-independent part; the differences, which decide the call, are ~10 % of it.
    contrast_weight: float = 9.0
    #: weight of the classification loss (cross-entropy of the per-class errors at the drawn
    #: timestep); when > 0 every cell is predicted under all classes and the null class, so a
    #: step costs ``batch_size * (classes + 1)`` evaluations and ``labels_per_cell`` is unused
    class_weight: float = 0.0
    #: start from the weights (student and EMA) of another distillation run's checkpoint
    #: folder with the same teacher and widths, e.g. to continue with another loss weighting;
    #: ``"teacher"`` starts from the teacher's own weights (widths must be the teacher's): with
    #: ``class_weight`` this fine-tunes the teacher as a classifier, anchored to its old self
    init_from: str | None = None
    seed: int = 0
    checkpoint_every: int = 250
    arch: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=lambda: asdict(AugmentConfig()))
    device: str | None = None
    max_seconds: float | None = None
    #: when finished, also write the int8 UNet for fast CPU inference (needs ``[onnx]``)
    int8: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings a run cannot use (:class:`~napari_cytodiffusion.errors.InputError`)."""
        check_run_settings(
            self,
            at_least_1=("batch_size", "labels_per_cell", "checkpoint_every"),
            positive=("lr",),
            non_negative=("max_seconds", "min_lr", "weight_decay", "warmup_steps", "t_min", "denoise_weight",
                          "contrast_weight", "class_weight"),
            fractions=("ema_decay", "null_share"),
        )  # fmt: skip
        if not self.t_min < self.t_max <= 999:
            raise InputError(
                f"timesteps must satisfy t_min < t_max <= 999, got {self.t_min} and {self.t_max}"
            )


def _labels(cls, n_classes: int, k: int, null_share: float, rng: np.random.Generator) -> np.ndarray:
    """(B, k) labels per cell: its own class first, then distinct other classes or the null class.

    Fewer than ``k`` columns when the model has fewer classes (own class and every other one).
    """
    b, k = len(cls), max(1, min(int(k), n_classes))
    out = np.empty((b, k), np.int64)
    out[:, 0] = cls
    for i in range(b):
        others = rng.permutation([c for c in range(n_classes) if c != cls[i]])[: k - 1]
        out[i, 1:] = others
        if k > 1 and rng.random() < null_share * (k - 1):
            out[i, 1 + rng.integers(k - 1)] = n_classes
    return out


def _all_labels(cls, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(B, C + 1) labels per cell: its own class, the other classes in random order, the null class."""
    out = np.empty((len(cls), n_classes + 1), np.int64)
    out[:, 0] = cls
    for i in range(len(cls)):
        out[i, 1:n_classes] = rng.permutation([c for c in range(n_classes) if c != cls[i]])
    out[:, n_classes] = n_classes
    return out


def _error_scale(calibration: dict[str, Any], n_train_timesteps: int) -> np.ndarray:
    """Per-timestep spread of paired error differences (the engine's ``scales``), interpolated.

    Falls back to the median spread of the shipped default model where the teacher has none.
    """
    eng = calibration.get("engine", {}) if calibration else {}
    ts, sc = eng.get("timesteps"), eng.get("scales")
    if not ts or not sc or len(ts) != len(sc):
        return np.full(n_train_timesteps, 1.7e-3)
    order = np.argsort(ts)
    return np.interp(np.arange(n_train_timesteps), np.asarray(ts)[order], np.asarray(sc)[order])


def _run_checkpoint(path: Path, teacher_hash: str) -> dict[str, Any]:
    """A distillation checkpoint, refused when it was made from another teacher."""
    state = load_checkpoint(path)
    if state.get("teacher") != teacher_hash:
        raise InputError(f"{path} was distilled from another teacher ({state.get('teacher')})")
    return state


def _init_state(run_dir: Path, teacher_hash: str, arch: dict[str, Any]) -> dict[str, Any]:
    """Student and EMA weights of another distillation run, checked against teacher and widths."""
    path = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"cannot start from {run_dir}: it has no distillation checkpoint ({path})")
    state = _run_checkpoint(path, teacher_hash)
    if state["config"].get("arch") != arch:
        raise InputError(f"{run_dir} has other widths than this run; start it with the same --widths")
    return state


def distill(
    teacher: DiffusionModel,
    data: TrainingData,
    out_dir: str | os.PathLike,
    widths: list[int],
    config: DistillConfig | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Distil ``teacher`` into a UNet with per-level ``widths``; yields progress dictionaries.

    Yields dicts with ``step``, ``total``, ``loss`` (running mean of the distillation loss),
    ``lr``, ``steps_per_second`` and ``elapsed``; the last one has ``done=True`` and
    ``model_dir`` (the student's folder, written at the end or at the time limit).
    """
    import torch

    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if list(data.classes) != list(teacher.classes):
        raise InputError(f"data classes {data.classes} differ from the teacher's {teacher.classes}")
    t_meta = teacher.metadata
    teacher_arch = t_meta.training.get("recipe", {}).get("arch")
    if not teacher_arch:
        raise ModelError(f"{teacher.path}: metadata has no training recipe architecture to narrow")
    state = None
    if resume:
        state = _run_checkpoint(ckpt_path, t_meta.content_hash)
        # older runs had neither a contrast weight nor a decaying learning rate
        saved = DistillConfig(**{"contrast_weight": 0.0, "min_lr": None, **state["config"]})
        config = resumed_config(saved, config, int(state["step"]))
    else:
        config = copy.deepcopy(config) if config is not None else DistillConfig()
        if config.steps is None:  # a new run needs a length
            config.steps = DistillConfig.steps
        config.arch = with_widths(teacher_arch, widths)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise InputError(f"{out_dir} exists and is not empty; use --resume or a new folder")
    size = int(config.arch["sample_size"])
    if data.images.shape[1] < size:
        raise InputError(f"training crops are {data.images.shape[1]} px, smaller than the model's {size}")

    config.check()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    n_classes = len(data.classes)
    student = build_unet(n_classes, config.arch).to(device)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    teacher_unet = copy.deepcopy(teacher.unet).to(device).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    np_rng = np.random.default_rng(config.seed)
    init_step = state.get("init_step") if state is not None else None
    if state is None and config.init_from == "teacher":
        if config.arch != teacher_arch:
            raise InputError(
                f"starting from the teacher needs its widths {teacher_arch['block_out_channels']}"
            )
        student.load_state_dict(teacher.unet.state_dict())
        ema.load_state_dict(teacher.unet.state_dict())
        init_step = int(t_meta.training.get("steps_done") or 0)
    elif state is None and config.init_from:
        init = _init_state(Path(config.init_from), t_meta.content_hash, config.arch)
        student.load_state_dict(init["unet"])
        ema.load_state_dict(init["ema"])
        init_step = int(init["step"])
    if state is not None:
        student.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["torch_gen"])
        np_rng.bit_generator.state = state["np_rng"]
    loop = LoopState(config.steps, config.checkpoint_every, config.max_seconds, state)

    ac = teacher.alphas_cumprod().to(device)
    err_scale = torch.as_tensor(_error_scale(t_meta.calibration, len(ac)), dtype=torch.float32).to(device)
    images = torch.from_numpy(data.images).to(device)
    _, by_class, starts, counts = _class_sampler(data.labels, n_classes, 1.0)
    aug_cfg = AugmentConfig(**config.augment)

    def save_checkpoint(elapsed: float) -> None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "unet": student.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "torch_gen": gen.get_state(),
                "np_rng": np_rng.bit_generator.state,
                "step": loop.step,
                "elapsed": elapsed,
                "config": asdict(config),
                "teacher": t_meta.content_hash,
                "init_step": init_step,
                "loss_hist": loop.loss_hist,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)

    def export(elapsed: float) -> Path:
        training = copy.deepcopy(t_meta.training)
        training.update(
            {
                "distilled_from": {"name": t_meta.name, "content_hash": t_meta.content_hash},
                "recipe": {"distillation": asdict(config), "teacher_recipe": t_meta.training.get("recipe")},
                "steps_done": loop.step,
                "steps_before_init": init_step,  # steps of the run named by recipe.init_from
                "train_seconds": round(elapsed, 1),
                "hardware": _hardware(device),
                "final_loss": loop.mean_loss(200) if loop.loss_hist else None,
            }
        )
        training["recipe"]["arch"] = config.arch
        meta = ModelMetadata(
            name=str((metadata or {}).get("name", out_dir.name)),
            classes=list(t_meta.classes),
            colours=list(t_meta.colours),
            preprocessing=copy.deepcopy(t_meta.preprocessing),
            schedule=copy.deepcopy(t_meta.schedule),
            training=training,
        )
        return save_model(copy.deepcopy(ema).to("cpu"), teacher.scheduler, meta, out_dir, overwrite=True)

    student.train()
    while loop.running():
        if should_stop is not None and should_stop():
            save_checkpoint(loop.elapsed())
            raise Cancelled(f"distillation stopped at step {loop.step}; resume with --resume")
        b = config.batch_size
        cls = np_rng.integers(0, n_classes, size=b)  # class-balanced
        idx = by_class[starts[cls] + (np_rng.random(b) * counts[cls]).astype(np.int64)]
        x0 = augment_batch(images[torch.from_numpy(idx).to(device)], size, gen, aug_cfg)
        t = torch.randint(config.t_min, config.t_max + 1, (b,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if config.class_weight > 0:
            labels = _all_labels(cls, n_classes, np_rng)
        else:
            labels = _labels(cls, n_classes, config.labels_per_cell, config.null_share, np_rng)
        k = labels.shape[1]
        y = torch.from_numpy(labels.reshape(-1)).to(device)
        xt_k = xt.repeat_interleave(k, 0)
        t_k = t.repeat_interleave(k, 0)
        with torch.no_grad():
            target = teacher_unet(xt_k, t_k, class_labels=y).sample
        lr = learning_rate(config, loop.step)
        for g in opt.param_groups:
            g["lr"] = lr
        pred = student(xt_k, t_k, class_labels=y).sample
        loss = ((pred - target) ** 2).mean()
        if config.contrast_weight > 0 and k > 1:
            dev_p = pred.view(b, k, *pred.shape[1:])
            dev_t = target.view(b, k, *target.shape[1:])
            dev_p = dev_p - dev_p.mean(1, keepdim=True)
            dev_t = dev_t - dev_t.mean(1, keepdim=True)
            loss = loss + config.contrast_weight * ((dev_p - dev_t) ** 2).mean()
        if config.denoise_weight > 0:
            own = pred.view(b, k, *pred.shape[1:])[:, 0]
            loss = loss + config.denoise_weight * ((own - noise) ** 2).mean()
        if config.class_weight > 0:  # columns 0..C-1 are the real classes, the own one first
            err = ((pred.reshape(b, k, -1) - noise.reshape(b, 1, -1)) ** 2).mean(-1)[:, :n_classes]
            logits = -err / err_scale[t][:, None]
            loss = loss + config.class_weight * torch.nn.functional.cross_entropy(
                logits, torch.zeros(b, dtype=torch.long, device=device)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        decay = min(config.ema_decay, (1 + loop.step) / (10 + loop.step))
        with torch.no_grad():
            torch._foreach_lerp_(
                list(ema.parameters()), [p.detach() for p in student.parameters()], 1 - decay
            )
        save, event = loop.advance(float(loss.detach()), lr)
        if save:
            save_checkpoint(loop.elapsed())
        if event is not None:
            yield event
    path = export(loop.elapsed())
    if loop.step >= config.steps and config.int8:
        yield {"step": loop.step, "total": config.steps, "loss": loop.mean_loss(), "stage": "int8"}
        _write_int8(path, data, TrainConfig(arch=config.arch, seed=config.seed))
    yield loop.final_events(path)
