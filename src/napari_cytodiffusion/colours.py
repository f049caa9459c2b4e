"""Class colours that readers with a colour-vision deficiency can tell apart, and the check that they can.

The class colours fill the cells' points, colour the labels, the legend, the inspector's bars and the
review page. About 1 man in 12 has a red-green deficiency, so two classes whose colours differ only in
red-green look alike to them. The PBC classes use Okabe & Ito's palette (*Color Universal Design*,
2008). Further classes (a user's model, classes added in napari) take colours found by a greedy max-min
search: each new colour is the one farthest (CIEDE2000, under every simulated kind of vision) from the
colours before it and from the plasma of PBC, TXL-PBC and BBBC041 smears. ``benchmarks/class_colours.py``
prints the separations.
"""

from __future__ import annotations

import itertools

import numpy as np

KNOWN_CLASS_COLOURS = {
    "basophil": "#cc79a7",
    "eosinophil": "#e69f00",
    "erythroblast": "#d55e00",
    "ig": "#000000",
    "lymphocyte": "#0072b2",
    "monocyte": "#009e73",
    "neutrophil": "#56b4e9",
    "platelet": "#f0e442",
}
EXTRA_CLASS_COLOURS = ("#772200", "#000099", "#330033", "#994466", "#8877ff", "#3300ee", "#99cc77", "#bb0044")
#: the colours of the classes a user adds in napari (a class the model lacks), by their sorted names
USER_CLASS_COLOURS = EXTRA_CLASS_COLOURS
_PALETTE = (*KNOWN_CLASS_COLOURS.values(), *EXTRA_CLASS_COLOURS)

#: Machado, Oliveira & Fernandes (2009), complete dichromacies (severity 1), on linear RGB
DICHROMACIES = {
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
    "tritanopia": np.array(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]
    ),
}
VISIONS = ("normal", *DICHROMACIES)


def default_colours(class_names: list[str], taken: list[str] | tuple[str, ...] = ()) -> list[str]:
    """A colour for each class: a PBC class its own, any other the first palette colour not yet used.

    ``taken``: colours already in use (a base model's, when classes are added to it).
    """
    out = [KNOWN_CLASS_COLOURS.get(name.lower(), "") for name in class_names]
    used = {c.lower() for c in taken} | set(out)
    free = [c for c in _PALETTE if c not in used]
    for i, colour in enumerate(out):
        if not colour:
            out[i] = free.pop(0) if free else _PALETTE[i % len(_PALETTE)]
    return out


def user_class_colour(index: int, model_colours: list[str] | tuple[str, ...] = ()) -> str:
    """The colour of the ``index``-th (sorted) class a user added: one the model's classes do not have."""
    taken = {c.lower() for c in model_colours}
    free = [c for c in USER_CLASS_COLOURS if c not in taken] or list(USER_CLASS_COLOURS)
    return free[index % len(free)]


def hex_to_rgb(colour: str) -> np.ndarray:
    """``#rrggbb`` → sRGB in [0, 1]."""
    c = colour.lstrip("#")
    return np.array([int(c[i : i + 2], 16) for i in (0, 2, 4)], float) / 255


def simulate_vision(rgb: np.ndarray, vision: str) -> np.ndarray:
    """sRGB colours (..., 3) in [0, 1] as a reader with ``vision`` (one of :data:`VISIONS`) sees them."""
    rgb = np.asarray(rgb, float)
    if vision == "normal":
        return rgb
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    seen = np.clip(linear @ DICHROMACIES[vision].T, 0, 1)
    return np.where(seen <= 0.0031308, 12.92 * seen, 1.055 * seen ** (1 / 2.4) - 0.055)


def smallest_difference(colours: list[str], vision: str = "normal") -> tuple[float, int, int]:
    """The smallest CIEDE2000 difference between two of ``colours`` as seen with ``vision``, and the pair.

    About 10 and more: told apart at a glance; under ~5: easily taken for one another.
    """
    from skimage.color import deltaE_ciede2000, rgb2lab

    lab = rgb2lab(simulate_vision(np.array([hex_to_rgb(c) for c in colours]), vision)[None])[0]
    return min(
        (float(deltaE_ciede2000(lab[i], lab[j])), i, j)
        for i, j in itertools.combinations(range(len(colours)), 2)
    )
