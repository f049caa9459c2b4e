"""Construction of the class-conditional UNet and its noise schedule.

The model is a diffusers :class:`~diffusers.UNet2DModel` with ``num_class_embeds =
n_classes + 1``; the last class id is the *null* class used for classifier-free guidance.
It predicts the noise (epsilon) under a 1000-step schedule.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

#: Architecture of the shipped default. 32 px keeps a UNet call at ~10 ms per cell on a
#: 2-core CPU (64 px costs ~48 ms, 48 px ~32 ms with the same widths; measured with
#: 2 threads, batch 128-256), which is what makes >= 5 cells/s reachable.
DEFAULT_ARCH: dict[str, Any] = {
    "sample_size": 32,
    "block_out_channels": [32, 64, 128],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "attention_head_dim": 32,
}

#: Small architecture for tests and quick experiments.
TINY_ARCH: dict[str, Any] = {
    "sample_size": 16,
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 16,
}


def parse_widths(text: str) -> list[int]:
    """Per-level UNet widths from text such as ``"16,32,64"``."""
    from ..errors import InputError

    try:
        return [int(w) for w in str(text).split(",")]
    except ValueError:
        raise InputError(f"widths {text!r}: give integers separated by commas, e.g. 16,32,64") from None


def with_widths(arch: dict[str, Any], widths: list[int]) -> dict[str, Any]:
    """``arch`` with other per-level widths (same number of levels; norm groups adapted)."""
    from ..errors import InputError

    levels = len(arch["block_out_channels"])
    if len(widths) != levels or min(widths) < 8:
        raise InputError(f"widths {widths}: give one width >= 8 for each of the {levels} levels")
    out = copy.deepcopy(arch)
    out["block_out_channels"] = [int(w) for w in widths]
    out["norm_num_groups"] = min(int(arch["norm_num_groups"]), int(widths[0]) // 2)
    return out


@dataclass
class ScheduleConfig:
    """Noise schedule (diffusers DDPMScheduler arguments)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_unet(n_classes: int, arch: dict[str, Any] | None = None):
    """Create an untrained class-conditional UNet for ``n_classes`` real classes."""
    from diffusers import UNet2DModel

    cfg = dict(DEFAULT_ARCH if arch is None else arch)
    return UNet2DModel(
        in_channels=3,
        out_channels=3,
        num_class_embeds=int(n_classes) + 1,
        sample_size=int(cfg["sample_size"]),
        block_out_channels=tuple(cfg["block_out_channels"]),
        down_block_types=tuple(cfg["down_block_types"]),
        up_block_types=tuple(cfg["up_block_types"]),
        layers_per_block=int(cfg["layers_per_block"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
        attention_head_dim=int(cfg["attention_head_dim"]),
    )


def build_scheduler(config: ScheduleConfig | dict[str, Any] | None = None):
    """Create the DDPM training scheduler."""
    from diffusers import DDPMScheduler

    if config is None:
        config = ScheduleConfig()
    if isinstance(config, ScheduleConfig):
        config = config.to_dict()
    kwargs = {k: v for k, v in config.items() if k != "extra"}
    kwargs.update(config.get("extra", {}) or {})
    return DDPMScheduler(**kwargs)


def alphas_cumprod(scheduler):
    """Return the cumulative alphas as a float32 tensor.

    ``scheduler`` is a diffusers scheduler, or its config as a mapping (``scheduler_config.json``):
    the common schedules are then computed here as diffusers does, without importing diffusers
    (the classifier needs nothing else from it; importing it costs ~2.5 s).
    """
    import torch

    if isinstance(scheduler, dict):
        betas = _betas(scheduler)
        if betas is None:  # a schedule we do not reproduce: let diffusers build it
            return alphas_cumprod(build_scheduler(_schedule_kwargs(scheduler)))
        return torch.cumprod(1.0 - betas, dim=0)
    return torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)


def _schedule_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _betas(config: dict[str, Any]):
    """diffusers DDPMScheduler betas for the plain schedules (float32), else None."""
    import math

    import torch

    if config.get("trained_betas") is not None or config.get("rescale_betas_zero_snr"):
        return None
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine schedule, betas capped at 0.999

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float32)
    return None
