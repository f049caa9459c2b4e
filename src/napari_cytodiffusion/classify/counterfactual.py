"""Counterfactual heat map: where a cell would have to change to be another class.

The cell is noised at a few mid-range timesteps (same noise for both classes); the UNet's
clean-image estimates under the source and the target class are compared pixel by pixel.
Large differences mark the regions (nucleus shape, granules, cytoplasm colour) the model
associates with the difference between the two classes.
"""

from __future__ import annotations

import numpy as np


def counterfactual_map(
    model,
    crop: np.ndarray,
    target: int,
    source: int | None = None,
    timesteps: tuple[int, ...] = (200, 350, 500),
    n_noise: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """Heat map (S, S), float ≥ 0, for one uint8 crop (S, S, 3).

    Parameters
    ----------
    model
        Loaded diffusion model.
    crop
        The cell, as cut for the model.
    target
        Class id the cell is compared to.
    source
        Class id it is compared from (e.g. the predicted class); the null class if None.
    """
    import torch

    from ..crops import to_model_tensor
    from ..errors import InputError

    n_cls = model.metadata.n_classes
    src = n_cls if source is None else int(source)
    if not (0 <= int(target) < n_cls and 0 <= src <= n_cls):
        raise InputError(f"class ids must be in 0..{n_cls - 1}")
    x0 = to_model_tensor(np.asarray(crop)[None]).to(model.device)
    ac = model.alphas_cumprod().to(model.device)
    g = torch.Generator().manual_seed(seed)
    k = len(timesteps) * n_noise
    eps = torch.randn((k, *x0.shape[1:]), generator=g).to(model.device)
    t = torch.as_tensor([ts for ts in timesteps for _ in range(n_noise)], device=model.device)
    a = ac[t][:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    with torch.inference_mode():
        pred = model.inference_unet()(
            torch.cat([xt, xt]),
            torch.cat([t, t]),
            class_labels=torch.cat([torch.full((k,), src), torch.full((k,), int(target))]).to(model.device),
        ).sample
    e_src, e_tgt = pred.chunk(2)
    # difference of the clean-image estimates x0_hat = (xt - sqrt(1-a) eps_hat) / sqrt(a)
    diff = ((1 - a).sqrt() / a.sqrt()) * (e_src - e_tgt)
    return diff.abs().sum(dim=1).mean(dim=0).cpu().numpy()


def difference_panel(original: np.ndarray, counterfactual: np.ndarray) -> np.ndarray:
    """[original | counterfactual | difference] as one uint8 RGB image (S, 3S, 3).

    The difference is the per-pixel colour distance, scaled to its maximum and shown with the
    inferno colour map (bright = changed most).
    """
    import matplotlib

    a = np.asarray(original, dtype=np.float32)
    b = np.asarray(counterfactual, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 3:
        from ..errors import InputError

        raise InputError(f"original {a.shape} and counterfactual {b.shape} must be equal (S, S, 3) crops")
    diff = np.sqrt(((a - b) ** 2).sum(axis=-1))
    heat = (matplotlib.colormaps["inferno"](diff / (diff.max() + 1e-9))[..., :3] * 255).astype(np.uint8)
    return np.concatenate([a.astype(np.uint8), b.astype(np.uint8), heat], axis=1)
