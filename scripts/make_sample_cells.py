"""Generate the white cells (and platelets) of the bundled sample smear with the shipped default model.

``napari_cytodiffusion.sample_data.generated_smear`` pastes these cells into a procedurally drawn
field of red cells, so the sample smear holds one cell of every class the model knows, each drawn by
the model itself, and the classifier has something meaningful to call. One cell per class, seed
``SEED0 + class id``, the generator's default settings; no cell is picked by hand or by its call.

Usage::

    python scripts/make_sample_cells.py [--out src/napari_cytodiffusion/data/sample/generated_cells.npz]

Rerun it whenever the default model changes: the file records the content hash of the weights that
drew it, and the test suite checks that it matches the shipped model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SEED0 = 2026


def main(argv: list[str] | None = None) -> int:
    from napari_cytodiffusion.generate.sampling import GenerateParams, generate
    from napari_cytodiffusion.io.atomic import write_with
    from napari_cytodiffusion.model.registry import get_model
    from napari_cytodiffusion.sample_data import GENERATED_CELLS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=GENERATED_CELLS)
    args = ap.parse_args(argv)
    model = get_model("default")
    ids = list(range(len(model.classes)))
    seeds = [SEED0 + c for c in ids]
    params = GenerateParams()
    cells = generate(model, ids, seeds, params)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to the temporary name
            np.savez_compressed(
                f,
                cells=cells,
                classes=np.array(model.classes),
                seeds=np.array(seeds),
                model=np.array(model.metadata.name),
                content_hash=np.array(model.metadata.content_hash),
                params=np.array(json.dumps(params.to_dict())),
            )

    write_with(args.out, save)
    print(f"{args.out}: {len(cells)} cells ({', '.join(model.classes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
