"""Sample smears made by the project (no third-party image is shipped).

Two fields, both deterministic:

- :func:`synthetic_smear`: drawn procedurally (pale background, red cells as biconcave discs,
  white cells with lobed violet nuclei, platelets, stain texture, blur and camera noise), with
  its ground-truth labels. It exercises segmentation; its drawn white cells are not real cell
  types, so their classification means nothing.
- :func:`generated_smear`: the same procedural red cells around one cell of every class *drawn
  by the shipped diffusion model* (``data/sample/generated_cells.npz``, made by
  ``scripts/make_sample_cells.py``). The classifier has real work to do on it, and the class each
  cell was generated as is known, so a user can check the calls by eye. This is napari's sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: cells drawn by the shipped default model, one per class (see ``scripts/make_sample_cells.py``)
GENERATED_CELLS = Path(__file__).parent / "data" / "sample" / "generated_cells.npz"
#: the model crop's field of view in red-cell diameters (as in the shipped models' ``smear``
#: preprocessing), used to paste generated crops at the scale the classifier will cut them
FIELD_RBC_DIAMETERS = 2.865


def _rng(seed: int) -> np.random.Generator:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number, 0 or more, got {seed!r}")
    return np.random.default_rng(int(seed))


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
    rng = _rng(seed)
    img, labels = _draw(height, width, rng, rbc_diameter, n_rbc, n_wbc, n_platelets)
    return _finish(img, rng), labels


def _draw(
    height: int,
    width: int,
    rng: np.random.Generator,
    rbc_diameter: float,
    n_rbc: int,
    n_wbc: int,
    n_platelets: int,
    occupied: np.ndarray | None = None,
    bg: np.ndarray | None = None,
    rbc_colour: tuple[float, float, float] = (0.80, 0.45, 0.47),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the cells on a float RGB field; ``occupied`` marks where no cell may go."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.array([0.93, 0.87, 0.84], np.float32) if bg is None else np.asarray(bg, np.float32)
    img = np.ones((height, width, 3), np.float32) * bg
    labels = np.zeros((height, width), np.uint32)
    occupied = np.zeros((height, width), bool) if occupied is None else occupied.copy()
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
                col = np.array(rbc_colour) * rng.uniform(0.95, 1.05)
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
    return img, labels


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics and camera: a little blur, stain texture, noise → uint8."""
    from scipy import ndimage

    height, width = img.shape[:2]
    img = ndimage.gaussian_filter(img, sigma=(1.0, 1.0, 0))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 12)[..., None]
    img = img * (1 + 0.02 * texture / (texture.std() + 1e-9)) + rng.normal(0, 0.012, img.shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


@dataclass
class GeneratedSmear:
    """A sample field with generated cells: the image and where each generated cell lies."""

    image: np.ndarray  #: uint8 RGB (H, W, 3)
    centres: np.ndarray  #: (N, 2) float row, column of each generated cell's centre
    classes: list[str]  #: the class each cell was generated as
    model_hash: str  #: content hash of the weights that drew the cells


def load_generated_cells(path: Path = GENERATED_CELLS) -> tuple[np.ndarray, list[str], str]:
    """The bundled generated cells: (N, S, S, 3) uint8 crops, their classes, the model's content hash."""
    with np.load(path, allow_pickle=False) as z:
        return z["cells"], [str(c) for c in z["classes"]], str(z["content_hash"])


def generated_smear(
    height: int = 600,
    width: int = 800,
    seed: int = 0,
    rbc_diameter: float = 46.0,
    n_rbc: int = 110,
    cells_path: Path = GENERATED_CELLS,
) -> GeneratedSmear:
    """A field of procedural red cells around the bundled generated cells (one per class).

    Each generated crop is scaled so that its field of view spans ``FIELD_RBC_DIAMETERS`` red-cell
    diameters of this smear (the scale at which the classifier cuts smear cells), pasted with a
    soft round edge, and gets the same blur, texture and noise as the rest of the field. ``seed``
    moves the cells and redraws the red cells; the generated cells themselves do not change.
    """
    from PIL import Image

    rng = _rng(seed)
    crops, classes, model_hash = load_generated_cells(cells_path)
    side = int(round(FIELD_RBC_DIAMETERS * rbc_diameter))
    radius = 0.5 * side  # the whole crop: the classifier reads the cell's neighbourhood too
    if height < 2 * side or width < 2 * side:
        raise ValueError(f"a {height}x{width} field is too small for {side}-px generated cells")
    centres: list[tuple[float, float]] = []
    for _ in range(len(crops)):
        for _ in range(500):
            c = (rng.uniform(side / 2, height - side / 2), rng.uniform(side / 2, width - side / 2))
            if all(max(abs(c[0] - o[0]), abs(c[1] - o[1])) > side + 12 for o in centres):
                centres.append(c)
                break
        else:
            raise ValueError(f"no room for {len(crops)} generated cells in a {height}x{width} field")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def rounded(cy: float, cx: float) -> np.ndarray:  # distance in a rounded-square (L6) norm
        return ((np.abs(yy - cy) ** 6 + np.abs(xx - cx) ** 6) ** (1 / 6)).astype(np.float32)

    dist = np.full((height, width), np.inf, np.float32)
    for cy, cx in centres:
        dist = np.minimum(dist, rounded(cy, cx))
    # the field's background is the generated cells' own (their brightest tenth), and its red cells
    # are tinted like theirs (greyish pink, pale centre)
    flat = crops.reshape(-1, 3).astype(np.float32) / 255.0
    bright = flat[flat.sum(1) >= np.quantile(flat.sum(1), 0.9)]
    bg = np.median(bright, 0)
    img, _ = _draw(
        height,
        width,
        rng,
        rbc_diameter,
        n_rbc,
        0,
        0,
        occupied=dist < radius + 4,
        bg=bg,
        rbc_colour=(0.73, 0.60, 0.61),
    )
    for (cy, cx), crop in zip(centres, crops, strict=True):
        big = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC), np.float32)
        # white balance: the crop's own background (its brightest tenth) onto the field's, so that
        # the pasted square does not stand out (to the eye, or to Cellpose as one big cell)
        px = big.reshape(-1, 3) / 255.0
        own = np.median(px[px.sum(1) >= np.quantile(px.sum(1), 0.9)], 0)
        big = np.clip(big * (bg / np.maximum(own, 1e-3)), 0, 255)
        top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
        win = (slice(top, top + side), slice(left, left + side))
        alpha = np.clip((radius - 1 - dist[win]) / 8.0, 0.0, 1.0)[..., None]
        img[win] = img[win] * (1 - alpha) + big / 255.0 * alpha
    return GeneratedSmear(
        image=_finish(img, rng), centres=np.array(centres), classes=classes, model_hash=model_hash
    )


def generated_cell_labels(smear: GeneratedSmear, labels: np.ndarray) -> np.ndarray:
    """The label id found at each generated cell's centre in a segmentation of ``smear`` (0: none)."""
    rows = np.clip(np.round(smear.centres[:, 0]).astype(int), 0, labels.shape[0] - 1)
    cols = np.clip(np.round(smear.centres[:, 1]).astype(int), 0, labels.shape[1] - 1)
    return np.asarray(labels)[rows, cols].astype(np.int64)


def make_sample_data():
    """npe2 sample-data provider: the generated-cell smear, and a points layer naming what each
    of its generated cells was generated as (to check the classifier's calls by eye)."""
    smear = generated_smear()
    points = {
        "name": "generated as",
        "features": {"generated_as": smear.classes},
        "text": {"string": "{generated_as}", "size": 10, "color": "black", "translation": [-62, 0]},
        "symbol": "disc",
        "size": 104,
        "face_color": "transparent",
        "border_color": "#e6a100",
        "border_width": 0.03,
    }
    return [
        (smear.image, {"name": "sample smear (generated cells)", "rgb": True}, "image"),
        (smear.centres, points, "points"),
    ]
