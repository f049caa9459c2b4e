"""Feature-space distance between real and generated cells, with a network available offline.

ImageNet networks (Inception for FID) cannot be downloaded here, so the features come from the
project's own diffusion UNet: the bottleneck (mid-block) activations of a lightly noised cell
under the null (unconditional) label, averaged over space. Sets are compared with the Fréchet
distance of Gaussians fitted to their features after a PCA fitted on the real cells; the
distance between a real subset of the same size and the other real cells gives the scale of "indistinguishable".
"""

from __future__ import annotations

import numpy as np


def unet_features(
    model, crops: np.ndarray, timestep: int = 50, seed: int = 0, batch: int = 256
) -> np.ndarray:
    """(N, C_mid) bottleneck features of uint8 crops (N, S, S, 3)."""
    import torch

    from ..crops import to_model_tensor

    unet = model.unet
    ac = model.alphas_cumprod()
    a = ac[int(timestep)]
    grabbed: list = []
    hook = unet.mid_block.register_forward_hook(lambda _m, _i, out: grabbed.append(out.mean(dim=(2, 3))))
    out = []
    try:
        for s in range(0, len(crops), batch):
            x0 = to_model_tensor(crops[s : s + batch]).to(model.device)
            g = torch.Generator().manual_seed(seed + s)
            noise = torch.randn(x0.shape, generator=g).to(model.device)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            t = torch.full((len(x0),), int(timestep), device=model.device)
            y = torch.full((len(x0),), model.metadata.null_class_id, device=model.device)
            grabbed.clear()
            with torch.inference_mode():
                unet(xt, t, class_labels=y)
            out.append(grabbed[0].float().cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(out) if out else np.zeros((0, 1))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples)."""
    from scipy import linalg

    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False))
    s2 = np.atleast_2d(np.cov(b, rowvar=False))
    # (``disp`` is deprecated from SciPy 1.17 and gone in 1.18; the plain call returns the root alone)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def feature_distances(
    model,
    real: np.ndarray,
    real_labels: np.ndarray,
    generated: np.ndarray,
    generated_labels: np.ndarray,
    dims: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per class: Fréchet distance real↔generated and, for scale, between two halves of the real cells.

    Features are projected on the ``dims`` leading principal axes of all real features, so that
    small generated sets (tens of cells) still give a well-posed covariance.
    """
    fr = unet_features(model, real, seed=seed)
    fg = unet_features(model, generated, seed=seed + 1)
    mean = fr.mean(axis=0)
    _, _, vt = np.linalg.svd(fr - mean, full_matrices=False)
    proj = vt[: min(dims, vt.shape[0])].T
    pr, pg = (fr - mean) @ proj, (fg - mean) @ proj
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for c in np.unique(generated_labels):
        g = pg[generated_labels == c]
        r = pr[real_labels == c]
        if len(g) < 3 or len(r) < 6:
            continue
        perm = rng.permutation(len(r))
        k = len(g) if len(r) >= 2 * len(g) else len(r) // 2  # same sample size as the generated set
        out[model.classes[int(c)]] = {
            "generated_vs_real": frechet_distance(g, r),
            "real_subset_vs_rest": frechet_distance(r[perm[:k]], r[perm[k:]]),
            "n_generated": int(len(g)),
            "n_real": int(len(r)),
        }
    return out
