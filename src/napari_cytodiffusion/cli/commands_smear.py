"""Sub-commands that work on smears: demo, segment, classify, analyze, evaluate-segmentation."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import InputError
from ._common import (
    DEVICE_HELP,
    classify_with_progress,
    count_arg,
    device_arg,
    expand_inputs,
    out_dir,
    seed_arg,
)


def _seg_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation")
    g.add_argument(
        "--seg-model",
        default="smear",
        help="'smear' (bundled, offline), a Cellpose built-in (cyto3, ...), a Cellpose model file, or a "
        "smear-model folder made by scripts/train_smear_model.py",
    )
    g.add_argument(
        "--diameter", type=float, default=None, help="cell diameter in pixels (default: automatic)"
    )
    g.add_argument(
        "--flow-threshold",
        type=float,
        default=0.4,
        help="Cellpose's flow error threshold: higher keeps more (and less regular) masks (default 0.4)",
    )
    g.add_argument(
        "--cellprob-threshold",
        type=float,
        default=0.0,
        help="Cellpose's cell-probability threshold: lower finds fainter cells (default 0)",
    )
    g.add_argument("--min-size", type=int, default=15, help="drop masks under this many pixels (default 15)")
    g.add_argument(
        "--max-size-fraction",
        type=float,
        default=0.9,
        help="drop masks larger than this fraction of the image as spurious (Cellpose's default: 0.4)",
    )
    g.add_argument("--exclude-border", action="store_true", help="drop every cell touching the image border")
    g.add_argument(
        "--border-pad",
        type=float,
        default=0.05,  # SegmentParams.border_pad
        help="mirror the image this many cell diameters beyond its edges before segmenting, so cells "
        "cut by the border are outlined like whole ones (default 0.05; 0 = off; 0.15 outlines more "
        "of them, as box-annotated inventories count them)",
    )
    g.add_argument(
        "--augment",
        action="store_true",
        help="Cellpose test-time augmentation (each network tile also seen flipped; ~2x slower)",
    )
    g.add_argument(
        "--no-large-cells",
        dest="large_cells",
        action="store_false",
        help="skip the second pass at twice the diameter that adds cells over twice the size of the "
        "rest missed by the first (a white cell among small red cells)",
    )
    g.add_argument(
        "--no-platelets",
        dest="platelets",
        action="store_false",
        help="skip the stain-based look between the cells for platelets the network left out",
    )
    g.add_argument("--gpu", action="store_true", help="use a GPU when available")


def _cls_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classification")
    g.add_argument("--model", default="default", help="model folder or name (default: bundled pbc32)")
    g.add_argument(
        "--speed",
        default="balanced",
        choices=["fast", "balanced", "accurate", "full"],
        help="classifier preset: adaptive with fewer UNet calls (fast), adaptive (balanced, default), "
        "adaptive with a rotated view (accurate), every class at every timestep (full)",
    )
    g.add_argument(
        "--cells",
        default="stained",
        choices=["stained", "all"],
        help="classify nucleated cells and platelets only (stained) or every cell",
    )
    g.add_argument("--min-area", type=int, default=0, help="do not classify cells under this many pixels")
    g.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the classifier's noise (same seed, same calls)"
    )
    g.add_argument(
        "--device",
        default="auto",
        help=f"{DEVICE_HELP} (the classifier's; Cellpose's is --gpu)",
    )
    g.add_argument(
        "--no-size-check",
        dest="size_check",
        action="store_false",
        help="on a smear, do not restrict each call to the classes its size allows",
    )
    g.add_argument(
        "--red-cell-px",
        type=float,
        default=None,
        help="a red cell's diameter in pixels, if known (about 7.5 µm / the camera's µm per pixel): the "
        "scale of crops and sizes, instead of measuring each field's red cells; for single-cell images, "
        "crops span the training crops' number of red cells instead of a fixed share of the image",
    )


def _seg_params(a):
    from ..segmentation.cellpose_seg import SegmentParams

    return SegmentParams(
        model=a.seg_model,
        diameter=a.diameter,
        flow_threshold=a.flow_threshold,
        cellprob_threshold=a.cellprob_threshold,
        min_size=a.min_size,
        max_size_fraction=a.max_size_fraction,
        exclude_border=a.exclude_border,
        border_pad=a.border_pad,
        augment=a.augment,
        large_cells=a.large_cells,
        platelets=a.platelets,
        gpu=a.gpu,
    )


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="sample smear (cells drawn by the model) → segmentation → classification → outputs"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the sample smear and of the classifier's noise"
    )
    p.add_argument(
        "--speed",
        default="fast",
        choices=["fast", "balanced", "accurate", "full"],
        help="classifier preset (as for classify; default fast)",
    )
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (the classifier's and the generator's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "segment",
        help="segment smear images into labels TIFF + cells CSV",
        description="Segment smear images: NAME_labels.tif (uint32, the audit trail in its description) and "
        "NAME_cells.csv (one row per cell) per image in --out. A stack (Z, Y, X[, C]) is segmented plane "
        "by plane: labels restart at 1 in each plane, and the cells table starts with a 'plane' column. "
        "Of several images, one that cannot be read or segmented is skipped with its reason on stderr; "
        "the exit status is then 1.",
    )
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    _seg_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "classify", help="classify single-cell images, or the cells of a smear given its labels"
    )
    p.add_argument("inputs", nargs="+", help="single-cell images/folders, or one smear image with --labels")
    p.add_argument("--labels", default=None, help="labels TIFF of the smear (from 'segment' or napari)")
    p.add_argument("--out", required=True, help="output folder")
    _cls_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("analyze", help="segment + classify + summarise many smears")
    p.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder (a re-run skips the images finished there)")
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address")
    p.add_argument("--workers", type=int, default=1, help="local dask workers (1 = run in this process)")
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds one image may take on a dask worker before it is marked failed and its worker "
        "restarted (0 = no limit; default 1800)",
    )
    _seg_args(p)
    _cls_args(p)
    p.add_argument(
        "--pool-scale",
        action="store_true",
        help="one red-cell size for all the images (one camera and magnification), measured over their "
        "whole red cells pooled, instead of each image's own: for cell-centred images with few red "
        "cells each (as analysers export them); every image is segmented before any is classified",
    )
    p.add_argument(
        "--by-folder",
        action="store_true",
        help="each folder of images is one slide (or patient), analysed on its own into OUT/<folder>/ "
        "(its cohort, differential, alerts, domain check and report); a folder given also brings its "
        "sub-folders' images; OUT/slides.csv has a row per slide",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="do not write report.html (the differential, alerts, flagged cells and cells by class as one "
        "page; 'napari-cytodiffusion report OUT' writes it later)",
    )
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "evaluate-segmentation", help="AP / detection F1 of the segmentation against references"
    )
    p.add_argument("--images", required=True, help="smear images: a folder, or one image file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--masks", help="folder of masks (binary or label images) named like the images")
    src.add_argument("--yolo", help="folder of YOLO .txt boxes named like the images")
    src.add_argument("--points", help="folder of .txt files with one 'x y [type]' point per cell")
    p.add_argument(
        "--binary-masks",
        action="store_true",
        help="treat every non-zero mask value as cell (masks coding cell parts, e.g. 128/255)",
    )
    p.add_argument(
        "--mask-connectivity",
        type=int,
        choices=(8, 4),
        default=8,
        help="cells of a binary mask: 8-connected components (default), or 4-connected, so that a "
        "one-pixel gap drawn between touching cells separates them even where it runs diagonally",
    )
    p.add_argument(
        "--pred",
        default=None,
        help="folder of label images computed before (NAME_labels.tif from segment/analyze, NAME.tif, "
        "NAME.png) to score instead of segmenting",
    )
    p.add_argument("--out", required=True, help="output folder: metrics.json")
    p.add_argument("--limit", type=count_arg, default=None, help="evaluate only the first N images")
    _seg_args(p)
    p.set_defaults(func=cmd_evaluate_segmentation)


def write_smear_outputs(res, out: Path, stem: str, model, input_path=None, image=None) -> dict[str, Path]:
    from ..export import audit_trail, write_cells_csv, write_labels_tiff, write_summary_json

    audit = audit_trail(
        model, res.parameters, input_path=input_path, input_array=image if input_path is None else None
    )
    return {
        "cells": write_cells_csv(res.table, out / f"{stem}_cells.csv", audit),
        "labels": write_labels_tiff(res.labels, out / f"{stem}_labels.tif", audit),
        "summary": write_summary_json(res.summary, out / f"{stem}_summary.json", audit),
    }


def cmd_demo(a) -> int:
    from PIL import Image

    from ..export import audit_trail, write_cells_csv, write_labels_tiff, write_summary_json
    from ..generate.sampling import GenerateParams, generate, montage
    from ..io.atomic import write_with
    from ..model.registry import get_model
    from ..pipeline import analyze
    from ..sample_data import generated_cell_labels, generated_smear

    model = get_model("default", device=device_arg(a.device))  # a device this machine lacks: no folder made
    out = out_dir(a.out)
    t0 = time.perf_counter()
    smear = generated_smear(seed=a.seed)
    image = smear.image
    res = analyze(image, model=model, speed=a.speed, seed=a.seed)
    # the sample's truth: the class each pasted cell was generated as, beside the call
    table = res.table.copy()
    table["generated_as"] = ""
    found = generated_cell_labels(smear, res.labels)
    for lab, cls in zip(found, smear.classes, strict=True):
        table.loc[table["label"] == lab, "generated_as"] = cls
    hits = table[table["generated_as"] != ""]
    agree = int((hits["class"] == hits["generated_as"]).sum()) if "class" in hits else 0
    summary = dict(res.summary)
    summary["sample"] = {
        "generated_cells": len(smear.classes),
        "segmented": int(len(hits)),
        "called_as_generated": agree,
        "flagged": int(hits["flagged"].sum()) if "flagged" in hits else 0,
        "generator_content_hash": smear.model_hash,
    }
    audit = audit_trail(model, res.parameters, input_array=image)
    write_with(out / "smear.png", lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
    write_cells_csv(table, out / "cells.csv", audit)
    write_labels_tiff(res.labels, out / "labels.tif", audit)
    write_summary_json(summary, out / "summary.json", audit)
    ids = [c for c in range(len(model.classes)) for _ in range(4)]
    imgs = generate(model, ids, [a.seed * 1000 + i for i in range(len(ids))], GenerateParams(steps=20))
    write_with(
        out / "generated_montage.png",
        lambda tmp: Image.fromarray(montage(imgs, 4, 3)).save(tmp, format="PNG"),
    )
    from ..report import write_report

    write_report(out)
    s = res.summary
    print(
        f"segmented {s['n_cells']} cells; classified {s['n_classified']} stained cells "
        f"({s['n_flagged']} flagged) in {time.perf_counter() - t0:.1f} s"
    )
    print("cells by class: " + ", ".join(f"{c} {k}" for c, k in s["counts"].items() if k))
    print(
        f"the sample's {len(smear.classes)} cells were drawn by the model, one per class: "
        f"{agree} called the class they were generated as, "
        f"{summary['sample']['flagged']} flagged for review (cells.csv: class vs generated_as)"
    )
    print(
        f"verdict: {s['verdict']}; outputs in {out}: smear.png, cells.csv, labels.tif, summary.json, "
        f"report.html (open it in a browser), generated_montage.png (rows 1-8 = {', '.join(model.classes)})"
    )
    print(
        f"what {model.metadata.name} is for, never learnt and was measured to miss: "
        f"napari-cytodiffusion models {model.metadata.name} (and report.html, About the model)"
    )
    return 0


def cmd_segment(a) -> int:
    from ..export import audit_trail, write_cells_csv, write_labels_tiff
    from ..io.images import check_distinct_stems, read_image
    from ..segmentation.cellpose_seg import segment
    from ..segmentation.table import stack_cells_table

    out = out_dir(a.out)
    params = _seg_params(a)
    paths = expand_inputs(a.images)
    check_distinct_stems(paths)
    failed: list[str] = []
    for path in paths:
        t0 = time.perf_counter()
        try:
            img = read_image(path)
            scale: dict = {}
            labels = segment(img, params, info=scale, name=path.name)
        except InputError as exc:  # one bad file of a batch: say so, go on with the others
            if len(paths) == 1:
                raise
            failed.append(path.name)
            print(f"{path.name}: skipped: {exc}", file=sys.stderr, flush=True)
            continue
        audit = audit_trail(None, {"segmentation": {**params.to_dict(), **scale}}, input_path=path)
        write_labels_tiff(labels, out / f"{path.stem}_labels.tif", audit)
        table = stack_cells_table(labels, img)  # a stack's table has a ``plane`` column
        write_cells_csv(table, out / f"{path.stem}_cells.csv", audit)
        planes = f" in {len(labels)} planes" if labels.ndim == 3 else ""
        print(
            f"{path.name}: {len(table)} cells{planes} in {time.perf_counter() - t0:.1f} s"
            + _scale_words(scale)
        )
    if len(failed) == len(paths) > 1:
        raise InputError(f"none of the {len(paths)} images could be segmented (each is named above)")
    if failed:
        print(f"{len(failed)} of {len(paths)} images skipped: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _scale_words(scale: dict) -> str:
    """' (segmented for cells of 74 px, automatic)' for a console line; '' for a stack or none."""
    d, source = scale.get("diameter_used_px"), scale.get("diameter_from")
    if not isinstance(d, (int, float)):
        return ""
    return f" (segmented for cells of {d:.0f} px, {source})"


def _check_red_cell_px(a) -> None:
    """Refuse a bad --red-cell-px before any image is read (a batch would fail on every image)."""
    from ..pipeline import check_red_cell_px

    check_red_cell_px(getattr(a, "red_cell_px", None), "--red-cell-px")


def cmd_classify(a) -> int:
    from ..classify.anomaly import domain_check_against, shift_warning
    from ..classify.classifier import calibration_for
    from ..crops import single_cell_crops
    from ..export import audit_trail, write_cells_csv
    from ..io.images import read_image
    from ..model.registry import get_model
    from ..pipeline import analyze

    _check_red_cell_px(a)
    model = get_model(a.model, device=device_arg(a.device))  # a bad model or device: no folder made
    if not a.labels:  # single cells: every image is read and cropped before the output folder is made
        paths = expand_inputs(a.inputs)
        crops = single_cell_crops(  # one image in memory at a time: only the small crops are kept
            (read_image(p) for p in paths),
            model.metadata.preprocessing,
            a.red_cell_px,
            [p.name for p in paths],
        )
    out = out_dir(a.out)
    if a.labels:
        if len(a.inputs) != 1:
            raise InputError("with --labels give exactly one smear image")
        from ..export import read_labels_tiff

        path = Path(a.inputs[0])
        image = read_image(path)
        labels, _ = (
            read_labels_tiff(a.labels)
            if Path(a.labels).suffix.lower() in (".tif", ".tiff")
            else (read_image(a.labels), {})
        )
        res = analyze(
            image,
            model=model,
            labels=labels,
            speed=a.speed,
            cells=a.cells,
            min_area=a.min_area,
            seed=a.seed,
            size_check=a.size_check,
            red_cell_px=a.red_cell_px,
        )
        write_smear_outputs(res, out, path.stem, model, input_path=path)
        print(
            f"{path.name}: classified {res.summary['n_classified']} cells; verdict {res.summary['verdict']}"
            + "".join(f"\n  - {r}" for r in res.summary["reasons"])
        )
        from ..report import write_report

        print(f"report: {write_report(out)}")  # of the folder: other smears classified into it too
        return 0
    res = classify_with_progress(model, crops, speed=a.speed, seed=a.seed)
    df = res.to_frame()
    # absolute, as a smear's audit records its image: the report finds the images from any folder
    df.insert(0, "path", [str(p.resolve()) for p in paths])
    params = {"speed": a.speed, "seed": a.seed, "red_cell_px": a.red_cell_px}
    write_cells_csv(df, out / "predictions.csv", audit_trail(model, params))
    print(
        f"classified {len(paths)} cells in {res.seconds:.1f} s ({len(paths) / max(res.seconds, 1e-9):.2f} cells/s); "
        f"{int(res.flagged.sum())} flagged → {out / 'predictions.csv'}"
    )
    from ..differential import differential, differential_line
    from ..io.atomic import write_json

    # single-cell images (an analyser's export of a slide's white cells): their differential
    diff = differential(df["class"].value_counts().to_dict(), model.classes, model.metadata.extra)
    if diff is not None:
        write_json(out / "differential.json", diff)
        if diff["leukocytes"]:
            from ..evaluate.plots import differential_png

            differential_png(diff, out / "differential.png", f"White-cell differential, {len(paths)} images")
        line = differential_line(diff)
        if line:
            print(line)
    domain = domain_check_against(res.anomaly, calibration_for(model, a.speed).get("anomaly"))
    if domain:
        write_json(out / "domain_check.json", domain)
    if domain and domain["shifted"]:
        print(f"warning: {shift_warning(domain)}")
    from ..report import write_report

    print(f"report: {write_report(out)}")
    return 0


def cmd_analyze(a) -> int:
    from ..batch import analysis_options, run_analysis, run_slides
    from ..io.images import image_paths

    if a.workers < 1:
        raise InputError(f"--workers must be at least 1, got {a.workers}")
    if a.timeout < 0:
        raise InputError(f"--timeout must be 0 (no limit) or positive, got {a.timeout:g}")
    _check_red_cell_px(a)
    if a.pool_scale and a.red_cell_px is not None:
        raise InputError("give either --red-cell-px or --pool-scale, not both")
    device_arg(a.device)  # a device this machine cannot use stops the run before it starts
    options = analysis_options(
        model=a.model,
        device=a.device,
        speed=a.speed,
        cells=a.cells,
        min_area=a.min_area,
        seed=a.seed,
        size_check=a.size_check,
        red_cell_px=a.red_cell_px,
        pool_scale=a.pool_scale,
        segmentation=_seg_params(a),
    )
    report = (run_slides if a.by_folder else run_analysis)(
        image_paths(a.inputs, subfolders=a.by_folder),
        out_dir(a.out),
        options,
        workers=a.workers,
        scheduler=a.scheduler,
        timeout=a.timeout or None,
        report=not a.no_report,
    )
    return 0 if report["failed"] == 0 else 1


def cmd_evaluate_segmentation(a) -> int:
    from ..evaluate.segmentation_report import iter_evaluate_segmentation
    from ..io.atomic import write_json

    out = out_dir(a.out)
    kind = "masks" if a.masks else "yolo" if a.yolo else "points"
    gen = iter_evaluate_segmentation(
        expand_inputs([a.images])[: a.limit],
        kind,
        Path(a.masks or a.yolo or a.points),
        params=None if a.pred else _seg_params(a),
        predictions=Path(a.pred) if a.pred else None,
        binary_masks=a.binary_masks,
        mask_connectivity=a.mask_connectivity,
    )
    while True:
        try:
            i, n, row = next(gen)
        except StopIteration as stop:
            metrics = stop.value
            break
        print(
            f"[{i}/{n}] {row['image']}: {row['n_pred']} cells, {row['n_true']} in the reference", flush=True
        )
    write_json(out / "metrics.json", metrics)
    skip = ("per_image", "segmentation", "by_image_size", "skipped_without_reference")
    if metrics["skipped_without_reference"]:
        print(f"{len(metrics['skipped_without_reference'])} images without a reference were skipped")
    print(json.dumps({k: v for k, v in metrics.items() if k not in skip}, indent=1))
    return 0
