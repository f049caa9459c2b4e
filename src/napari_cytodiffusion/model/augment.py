"""Batched, morphology-preserving augmentation on torch tensors (CPU or GPU).

Rotations (free or 90°), flips, small scale/shift jitter and small colour/stain jitter.
Cells have no preferred orientation, so rotations and flips are label-preserving; colour
jitter is kept small because colour (granules, cytoplasm) is what distinguishes classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class AugmentConfig:
    free_rotation: bool = True
    scale_jitter: float = 0.06
    shift: float = 0.03
    stain_jitter: float = 0.04
    brightness: float = 0.04
    contrast: float = 0.06
    saturation: float = 0.08


def augment_batch(
    images_u8, out_size: int, generator, cfg: AugmentConfig | None = None, enabled: bool = True
):
    """Augment a batch of stored crops and return model input in [-1, 1].

    Parameters
    ----------
    images_u8
        uint8 tensor (B, H, W, 3) on the target device; the central ``out_size/H``
        of each crop is the model's nominal field of view.
    out_size
        Model input size.
    generator
        ``torch.Generator`` on the CPU (keeps runs deterministic on any device).
    cfg
        Augmentation strengths.
    enabled
        If False, only the nominal centre crop/resize is done.
    """
    import torch
    import torch.nn.functional as F

    cfg = cfg or AugmentConfig()
    dev = images_u8.device
    x = images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    b, _, h, _ = x.shape
    base = out_size * 1.0 / h  # fraction of the stored crop that is the nominal field

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    if enabled:
        if cfg.free_rotation:
            theta = rand(b) * 2 * math.pi
        else:
            theta = torch.randint(0, 4, (b,), generator=generator).to(dev).float() * (math.pi / 2)
        flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
        scale = base * (1.0 + (rand(b) * 2 - 1) * cfg.scale_jitter)
        tx, ty = (rand(b) * 2 - 1) * cfg.shift, (rand(b) * 2 - 1) * cfg.shift
    else:
        theta = torch.zeros(b, device=dev)
        flip = torch.ones(b, device=dev)
        scale = torch.full((b,), base, device=dev)
        tx = ty = torch.zeros(b, device=dev)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    mat = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(mat, (b, 3, out_size, out_size), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if enabled:
        y01 = (y + 1) / 2
        gain = torch.exp((rand(b, 3) * 2 - 1) * cfg.stain_jitter)[:, :, None, None]
        y01 = y01 * gain
        mean = y01.mean(dim=(1, 2, 3), keepdim=True)
        contrast = (1 + (rand(b) * 2 - 1) * cfg.contrast)[:, None, None, None]
        y01 = (y01 - mean) * contrast + mean
        gray = y01.mean(dim=1, keepdim=True)
        sat = (1 + (rand(b) * 2 - 1) * cfg.saturation)[:, None, None, None]
        y01 = (y01 - gray) * sat + gray
        y01 = y01 + ((rand(b) * 2 - 1) * cfg.brightness)[:, None, None, None]
        y = y01.clamp(0, 1) * 2 - 1
    return y.contiguous()
