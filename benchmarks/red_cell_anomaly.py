"""Does the anomaly score see the parasite, or any red cell? Infected vs uninfected red-cell crops.

The issue's abnormal-cell check compares MP-IDB *P. falciparum* crops (tight boxes around one
infected red cell) with PBC val cells. The shipped models have no red-cell class, so a red cell
cropped the same way is out of distribution whether infected or not. This script cuts the same
kind of tight crops from BBBC041 (*P. vivax* thin smears, most red cells uninfected): connected
components of the masks within 0.7-1.3x the field's median area (single cells) not touching the
border, their bounding boxes as the images. It classifies PBC val, the *P. falciparum* crops and
these red cells through the single-cell path and prints each set's anomalous share and calls, and
the AUROC / sensitivity at specificity 0.96 of each pair.

Usage::

    python benchmarks/red_cell_anomaly.py --crops-out runs/bbbc_rbc [--max-cells 1000] [--speed balanced]
        [--model DIR] [--out runs/red_cell_anomaly.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def bbbc041_red_cells(out: Path, max_cells: int) -> list[Path]:
    """Tight crops of single BBBC041 cells (val fields first, then train) written to ``out``."""
    from PIL import Image
    from scipy import ndimage as ndi

    from napari_cytodiffusion.crops import as_uint8_rgb
    from napari_cytodiffusion.io.images import read_image

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for split in ("val", "train"):
        for mask_file in sorted((SHARED / "bbbc041" / split / "masks").glob("*.png")):
            image_file = next((SHARED / "bbbc041" / split / "images").glob(mask_file.stem + ".*"))
            image = as_uint8_rgb(read_image(image_file))
            lab, _ = ndi.label(np.asarray(Image.open(mask_file)) > 0)
            areas = np.bincount(lab.ravel())[1:]
            med = float(np.median(areas))
            for i, sl in enumerate(ndi.find_objects(lab)):
                if not 0.7 * med <= areas[i] <= 1.3 * med:  # merged pairs and slivers left out
                    continue
                if (
                    sl[0].start == 0
                    or sl[1].start == 0
                    or sl[0].stop == lab.shape[0]
                    or sl[1].stop == lab.shape[1]
                ):
                    continue
                f = out / f"{split}_{mask_file.stem}_{i}.png"
                Image.fromarray(image[sl]).save(f)
                files.append(f)
            if len(files) >= max_cells:
                return files
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops-out", type=Path, required=True, help="folder for the BBBC041 red-cell crops")
    ap.add_argument(
        "--max-cells", type=int, default=1000, help="stop after the field that reaches this many cells"
    )
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.evaluate.metrics import auroc, sensitivity_at_specificity
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, read_labelled
    from napari_cytodiffusion.io.images import IMAGE_SUFFIXES
    from napari_cytodiffusion.model.registry import get_model

    model = get_model(args.model)
    pre = model.metadata.preprocessing
    size, frac = pre["size"], pre["single_cell"]["center_crop_fraction"]
    falciparum = sorted(
        p for p in (SHARED / "mpidb_falciparum").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    sets = {
        "PBC val": read_labelled(SHARED / "pbc" / "labels.csv", split="val").paths,
        "P. falciparum (MP-IDB)": falciparum,
        "red cells (BBBC041)": bbbc041_red_cells(args.crops_out, args.max_cells),
    }
    scores, report = {}, {"model": model.metadata.name, "speed": args.speed, "sets": {}, "pairs": []}
    for name, paths in sets.items():
        res = classify_crops(model, load_single_cell_crops(paths, size, frac), speed=args.speed, seed=0)
        scores[name] = res.anomaly
        calls = np.bincount(res.pred, minlength=len(model.classes))
        report["sets"][name] = {
            "n": len(paths),
            "anomalous_share": float(np.mean(res.anomaly > res.anomaly_threshold)),
            "calls": dict(zip(model.classes, calls.tolist(), strict=True)),
        }
        share = report["sets"][name]["anomalous_share"]
        print(f"{name}: {len(paths)} cells, {share:.1%} anomalous", flush=True)
    names = list(sets)
    for normal, abnormal in ((names[0], names[1]), (names[0], names[2]), (names[2], names[1])):
        a, b = scores[normal], scores[abnormal]
        row = {
            "normal": normal,
            "abnormal": abnormal,
            "auroc": auroc(a, b),
            "sensitivity_at_specificity_0.96": sensitivity_at_specificity(a, b, 0.96),
        }
        report["pairs"].append(row)
        print(
            f"{abnormal} vs {normal}: AUROC {row['auroc']:.3f}, "
            f"sensitivity {row['sensitivity_at_specificity_0.96']:.2f} at specificity 0.96"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
