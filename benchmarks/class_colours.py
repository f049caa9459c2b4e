"""Can every user tell the class colours apart, and see them on a smear?

The class colours fill the cells' points, colour the labels and the legend, the inspector's bars and the
review page. About 1 man in 12 sees colours with a red-green deficiency, so a pair of classes whose
colours only differ in red-green is one colour to them. This script simulates the three complete
dichromacies (protanopia, deuteranopia, tritanopia; Machado, Oliveira & Fernandes 2009, severity 1, in
linear RGB) and prints, for each palette and each kind of vision:

- the smallest CIEDE2000 difference between two class colours (about 10 and more: told apart at a
  glance; under ~5: easily confused), and the pair that has it;
- the smallest difference between a class colour and the smear's background (its plasma: the median
  colour of the brightest 30 % of pixels of real images of ``../shared/data``: PBC, TXL-PBC, BBBC041).

Palettes: the shipped models' colours (their metadata), the palette for classes of a model trained by
the user (``default_colours``) together with the colours of the classes users add in napari
(``USER_CLASS_COLOURS``; all 16 together), and, for the record, the ColorBrewer *Paired* colours the PBC classes had before.

    python benchmarks/class_colours.py [--images 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

PAIRED_BEFORE = {
    "basophil": "#6a3d9a",
    "eosinophil": "#ff7f00",
    "erythroblast": "#e31a1c",
    "ig": "#b15928",
    "lymphocyte": "#1f78b4",
    "monocyte": "#33a02c",
    "neutrophil": "#fb9a99",
    "platelet": "#a6cee3",
}


def separations(
    colours: dict[str, str], backgrounds: dict[str, np.ndarray], vision: str
) -> tuple[float, str, float, str]:
    """(smallest pair difference, its pair, smallest difference to a background, its class and background)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    from napari_cytodiffusion.colours import hex_to_rgb, simulate_vision, smallest_difference

    names = list(colours)
    d_pair, i, j = smallest_difference(list(colours.values()), vision)
    lab = rgb2lab(simulate_vision(np.array([hex_to_rgb(colours[n]) for n in names]), vision)[None])[0]
    to_bg = []
    for where, bg in backgrounds.items():
        blab = rgb2lab(simulate_vision(bg[None], vision)[None])[0][0]
        to_bg += [
            (float(deltaE_ciede2000(lab[k], blab)), f"{names[k]} on {where}") for k in range(len(names))
        ]
    d_bg, which = min(to_bg) if to_bg else (float("nan"), "-")
    return d_pair, f"{names[i]} / {names[j]}", d_bg, which


def smear_background(paths: list[Path]) -> np.ndarray:
    """Median colour of the brightest 30 % of pixels (the plasma between the cells), over ``paths``."""
    from PIL import Image

    colours = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGB"), float) / 255
        px = a.reshape(-1, 3)
        bright = px[px.sum(1) >= np.quantile(px.sum(1), 0.7)]
        colours.append(np.median(bright, axis=0))
    return np.median(np.array(colours), axis=0)


def backgrounds(n: int) -> dict[str, np.ndarray]:
    sets = {
        "PBC": sorted((SHARED / "pbc" / "images").glob("*/*.jpg")),
        "TXL-PBC": sorted((SHARED / "txl_pbc" / "images" / "val").glob("*.jpg")),
        "BBBC041": sorted((SHARED / "bbbc041" / "val" / "images").glob("*.jpg")),
    }
    out = {}
    for name, paths in sets.items():
        if paths:
            step = max(1, len(paths) // n)
            out[name] = smear_background(paths[::step][:n])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="images per data set for the background colour")
    args = ap.parse_args(argv)
    from napari_cytodiffusion.colours import USER_CLASS_COLOURS, VISIONS, default_colours
    from napari_cytodiffusion.model.folder import read_metadata
    from napari_cytodiffusion.model.registry import bundled_models

    bgs = backgrounds(args.images)
    for name, bg in bgs.items():
        print(f"background {name}: #{''.join(f'{round(255 * v):02x}' for v in bg)}")
    palettes = {"Paired (the PBC classes' colours before)": PAIRED_BEFORE}
    for name, folder in bundled_models().items():
        md = read_metadata(folder)
        palettes[f"shipped model {name}"] = dict(zip(md.classes, md.colours, strict=True))
    unknown = [f"class {i + 1}" for i in range(12)]
    palettes["a user's model of 12 classes (default_colours)"] = dict(
        zip(unknown, default_colours(unknown), strict=True)
    )
    md = read_metadata(bundled_models()["default"])
    palettes["default model + the 8 colours of classes added in napari"] = {
        **dict(zip(md.classes, md.colours, strict=True)),
        **{f"yours {i + 1}": c for i, c in enumerate(USER_CLASS_COLOURS)},
    }
    print("\nsmallest CIEDE2000 difference: between two classes | between a class and the background")
    for title, colours in palettes.items():
        print(f"\n{title}")
        for vision in VISIONS:
            d_pair, pair, d_bg, which = separations(colours, bgs, vision)
            print(f"  {vision:12s} {d_pair:5.1f} ({pair}) | {d_bg:5.1f} ({which})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
