"""Sub-command ``counterfactual``: the *Cell inspector*'s pictures for many cells, from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._common import (
    DEVICE_HELP,
    classify_with_progress,
    device_arg,
    expand_inputs,
    out_dir,
    progress,
    seed_arg,
)


def _label_ids(value: str) -> list[int]:
    """``--cells 3,7,12``: label ids of a smear, each at least 1."""
    try:
        ids = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of label ids: {value!r}") from None
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError(f"label ids are whole numbers from 1: {value!r}")
    return ids


def _strength(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 < s <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {s}")
    return s


def register(sub) -> None:
    p = sub.add_parser(
        "counterfactual",
        help="each cell redrawn as another class, and where the model's two classes differ on it",
        description="What the Cell inspector shows, for many cells: each cell is classified (its call is the "
        "class it is explained from, unless --source says otherwise), redrawn as --target (SDEdit: noised "
        "part-way, --strength, and denoised as the target class) and compared with it, and given the heat "
        "map of where the model's predictions under the two classes differ. As a control the cell is also "
        "redrawn as its own class from the same noise. Writes NAME_as_TARGET.png per cell (cell, redrawn as "
        "its class, redrawn as the target, what the class changed, heat map) and counterfactuals.csv (the "
        "call, its probability, the target's, and class_change: the mean RGB distance, 0-441, between the "
        "two redrawn cells).",
    )
    p.add_argument("inputs", nargs="+", help="single-cell images/folders, or one smear image with --labels")
    p.add_argument("--target", required=True, help="the class to redraw each cell as (a class of the model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", default=None, help="labels TIFF of the smear (from 'segment' or napari)")
    p.add_argument(
        "--cells",
        type=_label_ids,
        default=None,
        help="with --labels: the label ids to explain, e.g. 3,7,12 (default: every classified cell)",
    )
    p.add_argument("--source", default=None, help="explain from this class instead of each cell's call")
    p.add_argument(
        "--strength",
        type=_strength,
        default=0.5,
        help="how far along the noise schedule the cell is taken before it is redrawn (0-1; more: the "
        "redrawn cell keeps less of the original; default 0.5, as in the inspector)",
    )
    p.add_argument("--model", default="default", help="model folder or name (default: bundled pbc32)")
    p.add_argument(
        "--speed",
        default="balanced",
        choices=["fast", "balanced", "accurate", "full"],
        help="classifier preset of the calls (as for classify)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the noise (same seed, same pictures)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--red-cell-px",
        type=float,
        default=None,
        help="a red cell's diameter in pixels, if known (as for classify)",
    )
    p.set_defaults(func=cmd_counterfactual)


def _smear_cells(a, model) -> tuple[np.ndarray, list[dict]]:
    """The chosen classified cells of one smear: their crops (as the inspector cuts them) and rows."""
    from ..export import read_labels_tiff
    from ..io.images import read_image
    from ..pipeline import analyze, run_crops

    if len(a.inputs) != 1:
        raise InputError("with --labels give exactly one smear image")
    path = Path(a.inputs[0])
    image = read_image(path)
    labels_path = Path(a.labels)
    labels = (
        read_labels_tiff(labels_path)[0]
        if labels_path.suffix.lower() in (".tif", ".tiff")
        else read_image(labels_path)
    )
    if a.cells:
        missing = sorted(set(a.cells) - set(np.unique(labels).tolist()))
        if missing:
            raise InputError(f"{labels_path.name} has no cell {', '.join(map(str, missing))}")
    res = analyze(
        image, model=model, labels=labels, only_labels=a.cells, cells="all" if a.cells else "stained",
        seed=a.seed, speed=a.speed, red_cell_px=a.red_cell_px,
    )  # fmt: skip
    table = res.table[res.table["classified"].astype(bool)]
    if table.empty:
        raise InputError(f"no classified cell to explain in {path.name}")
    crops = run_crops(image, labels, model.metadata.preprocessing, res.summary, res.table, table)
    rows = [
        {"name": f"{path.stem}_cell{int(r['label'])}", "path": str(path.resolve()), "label": int(r["label"]),
         "call": r["class"], "p_call": float(r[f"p_{r['class']}"]), "probs": r}
        for _, r in table.iterrows()
    ]  # fmt: skip
    return crops, rows


def _single_cells(a, model) -> tuple[np.ndarray, list[dict]]:
    from ..crops import single_cell_crops
    from ..io.images import read_image

    paths = expand_inputs(a.inputs)
    crops = single_cell_crops(
        (read_image(p) for p in paths), model.metadata.preprocessing, a.red_cell_px, [p.name for p in paths]
    )
    res = classify_with_progress(model, crops, speed=a.speed, seed=a.seed)
    df = res.to_frame()
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        raise InputError("two images share a file name stem; their pictures would overwrite each other")
    rows = [
        {"name": n, "path": str(p.resolve()), "label": None, "call": r["class"],
         "p_call": float(r[f"p_{r['class']}"]), "probs": r}
        for n, p, (_, r) in zip(names, paths, df.iterrows(), strict=True)
    ]  # fmt: skip
    return crops, rows


def cmd_counterfactual(a) -> int:
    import pandas as pd

    from ..classify.counterfactual import Counterfactual, explain, explain_figure
    from ..export import audit_trail, write_cells_csv
    from ..model.registry import get_model
    from ..pipeline import check_red_cell_px

    if a.labels is None and a.cells is not None:
        raise InputError("--cells picks cells of a smear: give its --labels too")
    check_red_cell_px(a.red_cell_px)
    model = get_model(a.model, device=device_arg(a.device))  # a bad model or device: no folder made
    target = model.classes[model.class_index(a.target)]
    source = None if a.source is None else model.classes[model.class_index(a.source)]
    crops, rows = _smear_cells(a, model) if a.labels else _single_cells(a, model)
    sources = [model.class_index(source or r["call"]) for r in rows]
    out = out_dir(a.out)
    bar = progress(None, total=len(rows), desc="counterfactual")
    found: list[Counterfactual] = []
    for item in explain(model, crops, model.class_index(target), sources, strength=a.strength, seed=a.seed):
        if isinstance(item, tuple):
            bar.n = item[0]
            bar.refresh()
        else:
            found = item
    bar.close()
    records = []
    for r, cf in zip(rows, found, strict=True):
        picture = out / f"{r['name']}_as_{target}.png"
        explain_figure(cf, source or r["call"], target, picture, call=r["call"])
        records.append(
            {
                "name": r["name"],
                "path": r["path"],
                "label": r["label"],
                "call": r["call"],
                "p_call": r["p_call"],
                "explained_from": source or r["call"],
                "target": target,
                "p_target": float(r["probs"][f"p_{target}"]),
                "class_change": cf.class_change,
                "picture": picture.name,
            }
        )
    table = pd.DataFrame.from_records(records)
    if a.labels is None:
        table = table.drop(columns="label")
    params = {"target": target, "source": source, "strength": a.strength, "seed": a.seed, "speed": a.speed}
    csv = write_cells_csv(table, out / "counterfactuals.csv", audit_trail(model, params))
    print(
        f"{len(records)} cells redrawn as {target} (strength {a.strength}): pictures and {csv}; "
        f"mean class change {np.mean([r['class_change'] for r in records]):.1f} (RGB distance, 0-441)"
    )
    return 0
