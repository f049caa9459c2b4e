"""Counterfactual heat map: where a cell would have to change to be another class.

The cell is noised at a few mid-range timesteps (same noise for both classes); the UNet's
clean-image estimates under the source and the target class are compared pixel by pixel.
Large differences mark the regions (nucleus shape, granules, cytoplasm colour) the model
associates with the difference between the two classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


def redraw_panel(original: np.ndarray, as_source: np.ndarray, as_target: np.ndarray) -> np.ndarray:
    """[original | redrawn as the source class | redrawn as the target | what the class changed] as
    one uint8 RGB image (S, 4S, 3).

    Both redrawn cells come from the same noise, so the last panel (the per-pixel colour distance
    between them, inferno, bright = changed most) is the class label's doing; a difference to the
    original would mostly show what any redrawing changes.
    """
    import matplotlib

    a, b, c = (np.asarray(x, dtype=np.uint8) for x in (original, as_source, as_target))
    if not (a.shape == b.shape == c.shape) or a.ndim != 3:
        from ..errors import InputError

        raise InputError(f"crops {a.shape}, {b.shape} and {c.shape} must be equal (S, S, 3)")
    diff = _distance(b, c)
    heat = (matplotlib.colormaps["inferno"](diff / (diff.max() + 1e-9))[..., :3] * 255).astype(np.uint8)
    return np.concatenate([a, b, c, heat], axis=1)


@dataclass
class Counterfactual:
    """One cell explained against a target class (see :func:`explain`)."""

    crop: np.ndarray  #: (S, S, 3) uint8, the cell as cut for the model
    redrawn: np.ndarray  #: (S, S, 3) uint8, the cell redrawn as the target class (SDEdit)
    #: (S, S, 3) uint8, the cell redrawn as its source class from the same noise: the control, so
    #: that what differs from ``redrawn`` is the class label's doing, not the redrawing's
    redrawn_as_source: np.ndarray
    heat: np.ndarray  #: (S, S) float ≥ 0, :func:`counterfactual_map` from the source to the target class
    #: mean per-pixel RGB distance (0–441) between the two redrawn cells: how much the cell changes
    #: from being drawn as the source class to being drawn as the target (0 when they are one class)
    class_change: float


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance of two uint8 images."""
    return np.sqrt(((a.astype(np.float32) - b.astype(np.float32)) ** 2).sum(-1))


def explain(
    model,
    crops: np.ndarray,
    target: int,
    sources: Sequence[int],
    strength: float = 0.5,
    seed: int = 0,
) -> Iterator[tuple[int, int] | list[Counterfactual]]:
    """What the *Cell inspector* shows, for many cells, with a control: each cell's heat map
    against ``target`` (from its ``sources`` class, e.g. its call), and the cell redrawn as the
    target and, from the same noise, as its source class.

    A generator: yields ``(done, total)`` after each cell, then the list of
    :class:`Counterfactual`. The inspector's functions (:func:`counterfactual_map`,
    :func:`~napari_cytodiffusion.generate.sampling.sdedit`, seed ``seed``), so a cell's heat map and
    redrawn cell are the ones the inspector shows.
    """
    from ..generate.sampling import sdedit

    crops = np.asarray(crops)
    if len(sources) != len(crops):
        raise ValueError(f"{len(crops)} crops but {len(sources)} source classes")
    out: list[Counterfactual] = []
    for i, (crop, src) in enumerate(zip(crops, sources, strict=True)):
        heat = counterfactual_map(model, crop, target=target, source=src, seed=seed)
        redrawn = sdedit(model, crop[None], target, strength=strength, seed=seed)[0]
        control = (
            redrawn if int(src) == int(target) else sdedit(model, crop[None], src, strength, seed=seed)[0]
        )
        out.append(Counterfactual(crop, redrawn, control, heat, float(_distance(control, redrawn).mean())))
        yield i + 1, len(crops)
    yield out


def explain_figure(cf: Counterfactual, source: str, target: str, path, call: str | None = None) -> None:
    """A titled PNG of one :class:`Counterfactual`: the cell (``call``: what it was called), the cell
    redrawn as ``source`` and as ``target`` from the same noise, what the class label changed between
    them, and where the model's ``source`` and ``target`` classes differ on the cell. Written
    atomically."""
    from matplotlib.figure import Figure  # no pyplot: safe in a worker thread

    from ..io.atomic import write_with

    fig = Figure(figsize=(10, 2.5), dpi=100)
    panels = (
        (f"cell, called {call}" if call else "cell", cf.crop),
        (f"redrawn as {source}", cf.redrawn_as_source),
        (f"redrawn as {target}", cf.redrawn),
        ("what the class changed", _distance(cf.redrawn_as_source, cf.redrawn)),
        (f"{source} → {target}: heat map", cf.heat),
    )
    for k, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(img, cmap="inferno" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
