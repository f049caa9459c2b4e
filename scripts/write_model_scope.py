"""Write the shipped models' scope (``extra["scope"]``): what each is for and what it cannot tell.

The model card (``napari-cytodiffusion models NAME``, the widgets' model tooltip, the review page's
*About the model*) reads it; ``napari_cytodiffusion.model.scope`` says what each key means. Every
figure here is one of this project's measurements (docs/measurements.md, README *What it
measures*); when a measurement is redone, change it here and run::

    python scripts/write_model_scope.py            # both shipped models
    python scripts/write_model_scope.py --check    # exit 1 if a shipped model's scope differs

Only ``cytodiffusion.json`` changes; the weights and the content hash do not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "src" / "napari_cytodiffusion" / "data" / "models"

_USE = "research and teaching, not a diagnostic device: every call needs a qualified person's review"
_POPULATION = (
    "blood cells of healthy donors from one laboratory (Hospital Clinic of Barcelona), photographed by a "
    "CellaVision DM96 after May-Grünwald-Giemsa staining, one cell at the centre of each image"
)
_CLASS_NOTES = {
    "erythroblast": "nucleated red cells",
    "ig": "immature granulocytes: promyelocytes, myelocytes and metamyelocytes together",
    "neutrophil": "band and segmented neutrophils together, so no left shift is counted",
    "platelet": "PBC's platelet images, mostly large platelets and clumps; the single small platelets of a "
    "smear are called by their size",
}
_NOT_LEARNT = [
    "blasts",
    "promonocytes",
    "reactive (variant) lymphocytes",
    "large granular lymphocytes",
    "plasma cells",
    "hairy cells and other lymphoma or leukaemia cells",
    "smudge cells",
    "red-cell shapes and inclusions (red cells are counted, not classified)",
]
_RESOLUTION = (
    "resolution: a crop spans about 2.9 red-cell diameters (~21 µm) in 32 pixels, ~0.7 µm a pixel, so "
    "granules, Auer rods, Döhle bodies, nucleoli and fine chromatin are below what the model resolves; its "
    "calls rest on size, shape, nuclear outline and colour"
)
_LEFT_OUT = (
    "a kind of white cell never learnt: {who} trained without erythroblasts (a shorter run) scored 34 % of "
    "the left-out erythroblasts above an anomaly threshold that 4 % of normal cells pass (AUROC 0.856, PBC "
    "val), and called them immature granulocyte, lymphocyte, basophil, platelet, neutrophil or eosinophil"
)
_RED_CELLS = (
    "cells unlike every blood cell learnt are flagged well: P. falciparum-infected red cells (MP-IDB, 1,016) "
    "AUROC 0.99, {sens} % above the threshold that 4 % of normal cells pass; uninfected red cells cropped "
    "the same way are flagged as well, so the flag says 'unlike the training cells', not 'parasite'"
)
_OTHER_LABS = (
    "other laboratories, unadapted: balanced accuracy {ds2} and {ds1} on white cells of two other "
    "laboratories (segmentation_WBC datasets 2 and 1, 100 and 300 cells){flagged}; the domain check "
    "says so. Adapt with finetune: 10 labelled cells per class took dataset 1 from 0.32 to 0.83 (pbc32)"
)

_BAND = (
    "the neutrophil-IG boundary: on PBC val {meta} of 94 metamyelocytes were called neutrophil and 7 of 169 band "
    "neutrophils IG, while all 151 segmented neutrophils were called neutrophil: the errors between the two "
    "classes lie where a metamyelocyte meets a band, a boundary on which observers also disagree "
    "(benchmarks/subclass_confusions.py)"
)

SCOPES = {
    "pbc32": {
        "intended_use": _USE,
        "population": _POPULATION,
        "class_notes": _CLASS_NOTES,
        "not_learnt": _NOT_LEARNT,
        "limits": [
            _RESOLUTION,
            _BAND.format(meta=12),
            _LEFT_OUT.format(who="a variant of this model's recipe"),
            _RED_CELLS.format(sens=95),
            _OTHER_LABS.format(
                ds2="0.47",
                ds1="0.31",
                flagged=", with 33 % and 83 % of those cells flagged; on whole fields from three other "
                "laboratories (TXL-PBC val) 76 % of the classified cells are flagged",
            ),
        ],
    },
    "pbc32-fast": {
        "intended_use": _USE,
        "population": _POPULATION + " (distilled from pbc32 on the same cells)",
        "class_notes": _CLASS_NOTES,
        "not_learnt": _NOT_LEARNT,
        "limits": [
            _RESOLUTION,
            _BAND.format(meta=16),
            _LEFT_OUT.format(
                who="not measured for this distilled model; a variant of its teacher pbc32's recipe"
            ),
            _RED_CELLS.format(sens=97),
            _OTHER_LABS.format(ds2="0.52", ds1="0.24", flagged=""),
        ],
    },
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if a scope differs")
    args = ap.parse_args(argv)

    from napari_cytodiffusion.model.folder import read_metadata, write_metadata

    differs = []
    for name, scope in SCOPES.items():
        folder = MODELS / name
        meta = read_metadata(folder)
        if meta.extra.get("scope") == scope:
            print(f"{name}: scope up to date")
            continue
        differs.append(name)
        if not args.check:
            meta.extra["scope"] = scope
            write_metadata(folder, meta)
            print(f"{name}: scope written")
    if args.check and differs:
        print("scope differs: " + ", ".join(differs), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
