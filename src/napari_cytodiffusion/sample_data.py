"""A synthetic blood smear made by the project (no third-party image is shipped).

The field is rendered procedurally and deterministically: pale background, red cells as
biconcave discs (dark rim, central pallor, slight ellipticity), a few white cells with
lobed or round violet nuclei and granular cytoplasm, platelets, plus stain texture,
blur and camera noise.
"""

from __future__ import annotations

import numpy as np


def synthetic_smear(
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    rbc_diameter: float = 46.0,
    n_rbc: int = 70,
    n_wbc: int = 3,
    n_platelets: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a smear; returns (uint8 RGB image, uint32 ground-truth labels)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.array([0.93, 0.87, 0.84], np.float32)
    img = np.ones((height, width, 3), np.float32) * bg
    labels = np.zeros((height, width), np.uint32)
    occupied = np.zeros((height, width), bool)
    next_id = 1

    def place(radius: float, tries: int = 200):
        for _ in range(tries):
            cy, cx = (
                rng.uniform(radius * 0.3, height - radius * 0.3),
                rng.uniform(radius * 0.3, width - radius * 0.3),
            )
            y0, y1 = int(max(0, cy - radius - 3)), int(min(height, cy + radius + 3))
            x0, x1 = int(max(0, cx - radius - 3)), int(min(width, cx + radius + 3))
            if not occupied[y0:y1, x0:x1].any():
                return cy, cx
        return None

    def ellipse(cy, cx, r, ecc, ang):
        dy, dx = yy - cy, xx - cx
        c, s = np.cos(ang), np.sin(ang)
        u, v = (dx * c + dy * s) / (r * (1 + ecc)), (-dx * s + dy * c) / (r * (1 - ecc))
        return np.sqrt(u * u + v * v)

    for kind, count in (("wbc", n_wbc), ("rbc", n_rbc), ("plt", n_platelets)):
        for _ in range(count):
            r = {
                "wbc": rbc_diameter * rng.uniform(0.65, 0.8),
                "rbc": rbc_diameter / 2 * rng.uniform(0.9, 1.1),
                "plt": rbc_diameter * rng.uniform(0.08, 0.12),
            }[kind]
            pos = place(r)
            if pos is None:
                continue
            cy, cx = pos
            d = ellipse(cy, cx, r, rng.uniform(0, 0.08), rng.uniform(0, np.pi))
            inside = d < 1.0
            if kind == "rbc":
                depth = 0.55 + 0.35 * np.clip(d, 0, 1) ** 2  # central pallor, darker rim
                col = np.array([0.80, 0.45, 0.47]) * rng.uniform(0.95, 1.05)
                tint = bg[None, :] * (1 - depth[inside, None]) + col[None, :] * depth[inside, None]
                img[inside] = tint
            elif kind == "wbc":
                img[inside] = np.array([0.80, 0.72, 0.82]) + rng.normal(0, 0.03, (inside.sum(), 3))
                lobes = rng.integers(1, 4)
                for _ in range(lobes):
                    oy, ox = rng.normal(0, r * 0.25, 2)
                    nd = ellipse(
                        cy + oy,
                        cx + ox,
                        r * rng.uniform(0.3, 0.5),
                        rng.uniform(0.1, 0.3),
                        rng.uniform(0, np.pi),
                    )
                    nuc = (nd < 1.0) & inside
                    img[nuc] = np.array([0.38, 0.22, 0.52]) + rng.normal(0, 0.04, (nuc.sum(), 3))
            else:
                img[inside] = np.array([0.55, 0.35, 0.62])
            labels[inside & (labels == 0)] = next_id
            occupied |= ndimage.binary_dilation(inside, iterations=2)
            next_id += 1
    img = ndimage.gaussian_filter(img, sigma=(1.0, 1.0, 0))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 12)[..., None]
    img = img * (1 + 0.02 * texture / (texture.std() + 1e-9)) + rng.normal(0, 0.012, img.shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8), labels


def make_sample_data():
    """npe2 sample-data provider: the synthetic smear as an image layer."""
    img, _ = synthetic_smear()
    return [(img, {"name": "synthetic smear", "rgb": True}, "image")]
