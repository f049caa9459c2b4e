"""Give the platelet class's anomaly profile a second reference: the single platelets of a smear.

The shipped models learnt platelets from PBC's platelet *images* (large platelets and clumps,
centred in the crop), and their anomaly profiles were fitted on those. The platelets lying around
the cells of any smear are single and small (about a third of a red cell across); cut out by
their masks, as ``analyze`` does, 81-86 % of those on PBC's own images scored anomalous. This script
collects them from PBC images the way the smear path sees them (segmented with the shipped smear
model; every stained cell except the image's centre cell, cropped at the field's own red-cell
scale, with the size check), runs each calibration block's backend and preset on them, and fits
an extra reference (``anomaly.profile["components"]``, :func:`~napari_cytodiffusion.classify.
anomaly.fit_component`) on the noise bands of the cells too small for any other class (all called
platelet). It applies to smear cells of that size only (``max_size``), where it is the nearer of
the class's two references; single-cell images, other classes and the threshold are unchanged.

Fitted on the ``train`` split; with ``--validate-per-class`` the anomalous share of ``val``
smear platelets before and after is stored beside the component.

Run it after every script that refits a block's anomaly profile (``calibrate_default_model.py``,
``calibrate_presets.py``, ``refit_int8_constants.py``): the component belongs to the profile's
unit reference. Crops and errors of each run are kept in ``--work`` (``{split}{per_class}_s31_cells.npz``,
``{split}{per_class}_{model}_{backend}_{speed}.npz``) so that a rerun only fits.

Usage::

    python scripts/calibrate_smear_platelets.py --model src/napari_cytodiffusion/data/models/pbc32 \\
        --data ../shared/data/pbc --work runs/smear_platelets --backends int8 torch \\
        --speeds balanced accurate fast full [--per-class 120] [--validate-per-class 100]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

COMPONENT = "smear platelets"


def collect(
    data: Path, split: str, per_class: int, work: Path, model, seed: int = 31
) -> dict[str, np.ndarray]:
    """Crops, allowed classes and sizes of the non-centre stained cells of ``per_class`` images per class."""
    out = work / f"{split}{per_class}_s{seed}_cells.npz"  # a cache of one draw: its split, size and seed
    if out.is_file():
        return dict(np.load(out))
    import napari_cytodiffusion.pipeline as P
    from napari_cytodiffusion.classify.size import allowed_classes, class_ranges, size_ratio
    from napari_cytodiffusion.crops import crops_from_labels
    from napari_cytodiffusion.io.images import read_image, to_rgb_float
    from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams, segment
    from napari_cytodiffusion.segmentation.table import cells_table

    rows = [r for r in csv.DictReader(open(data / "labels.csv", newline="")) if r["split"] == split]
    rng = np.random.default_rng(seed)
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["class"], []).append(r)
    pick = [by[c][i] for c in sorted(by) for i in rng.permutation(len(by[c]))[:per_class]]
    ranges = class_ranges(model.metadata.extra)
    cache = work / "labels"
    cache.mkdir(parents=True, exist_ok=True)
    crops, allowed, sizes, paths = [], [], [], []
    t0 = time.perf_counter()
    for k, r in enumerate(pick):
        img = read_image(data / r["path"])
        rgb = to_rgb_float(img)
        f = cache / ("pbc__" + r["path"].replace("/", "__") + ".npy")
        if f.is_file():
            lab = np.load(f)
        else:
            lab = segment(img, SegmentParams())
            np.save(f, lab)
        table = cells_table(lab, rgb)
        if not len(table):
            continue
        ids = table["label"].to_numpy()
        score = P.stained_score(rgb, lab, ids)
        table["stain_score"] = score
        sel = P.select_cells(table, rgb, lab, "stained", score=score)
        h, w = lab.shape
        centre = int(lab[h // 2, w // 2])
        if centre == 0:  # the nearest cell to the centre is the image's own cell
            d2 = (table["centroid_y"] - h / 2) ** 2 + (table["centroid_x"] - w / 2) ** 2
            centre = int(ids[int(np.argmin(d2.to_numpy()))])
        sel &= ids != centre
        if not sel.any():
            continue
        ref, _ = P.reference_diameter(table, score)
        diam = table["equivalent_diameter"].to_numpy(dtype=float)
        c, _ = crops_from_labels(
            rgb, lab, model.metadata.preprocessing, ids[sel],
            table[["centroid_y", "centroid_x"]].to_numpy()[sel], diam[sel], reference_diameter=ref,
        )  # fmt: skip
        s = size_ratio(diam, ref)[sel]
        crops.append(c)
        sizes.append(s)
        allowed.append(allowed_classes(s, model.classes, ranges))
        paths += [r["path"]] * int(sel.sum())
        if (k + 1) % 100 == 0:
            print(
                f"{split}: {k + 1}/{len(pick)} images, {len(paths)} cells, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    cells = {
        "crops": np.concatenate(crops),
        "allowed": np.concatenate(allowed),
        "size": np.concatenate(sizes),
        "paths": np.array(paths),
    }
    np.savez_compressed(out, **cells)
    return cells


def errors_of(model, cells, backend: str, speed: str, split: str, work: Path):
    """The preset's errors on the cells (cached in ``work``; ``split`` names the draw, e.g. ``train120``)."""
    from napari_cytodiffusion.classify.calibration import error_run
    from napari_cytodiffusion.classify.engine import ErrorResult

    f = work / f"{split}_{model.metadata.name}_{backend}_{speed}.npz"
    if f.is_file():
        z = np.load(f)
        return ErrorResult(*(z[k] for k in ErrorResult.__dataclass_fields__))
    t0 = time.perf_counter()
    res = error_run(model, cells["crops"], speed=speed, seed=0)
    np.savez(f, **{k: getattr(res, k) for k in ErrorResult.__dataclass_fields__})
    n = len(cells["crops"])
    print(f"{split} {backend} {speed}: {n} cells in {time.perf_counter() - t0:.0f} s", flush=True)
    return res


def block_of(meta, backend: str, speed: str) -> dict | None:
    """The calibration block a backend/preset run uses, if it has its own constants."""
    base = (
        meta.calibration
        if backend == "torch"
        else (meta.extra.get("int8") or {}).get("classifier_calibration")
    )
    if not base:
        return None
    if speed == "balanced":
        return base
    return (base.get("presets") or {}).get(speed)


def platelet_profiles(model, cal, res, allowed, sizes):
    """Calls and profile features of a run, as ``finish`` computes them."""
    from napari_cytodiffusion.classify.anomaly import profile_features
    from napari_cytodiffusion.classify.classifier import finish

    c = finish(res, model.classes, cal, 0.0, {}, allowed=allowed, sizes=sizes)
    an = cal["anomaly"]
    f = profile_features(
        res.errors,
        res.unit_timesteps,
        res.unit_scales,
        c.pred,
        an["unit_reference"],
        gaps=an["gaps"],
        null_errors=res.null_errors,
    )
    return c.pred, f


def smallest_other(model, cls: str) -> float:
    """The smallest size (red-cell diameters) any class other than ``cls`` may have: below it, only ``cls``."""
    from napari_cytodiffusion.classify.size import class_ranges

    ranges = class_ranges(model.metadata.extra)
    lows = [lo for c, (lo, _) in ranges.items() if c != cls and lo > 0]
    if not lows:
        raise SystemExit(
            f"{model.metadata.name}: no class sizes in the metadata; run benchmarks/class_size.py first"
        )
    return float(min(lows))


def shares(feats, pred, sizes, prof, comp, thr) -> dict:
    """Share of cells above the anomaly threshold without and with the component."""
    from napari_cytodiffusion.classify.anomaly import profile_scores

    before = profile_scores(feats, pred, prof, sizes)
    after = profile_scores(feats, pred, {**prof, "components": [comp]}, sizes)
    return {"n": int(len(pred)), "before": float(np.mean(before > thr)), "after": float(np.mean(after > thr))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the PBC folder (labels.csv, images/)")
    ap.add_argument("--work", type=Path, required=True, help="folder for labels, crops and errors")
    ap.add_argument("--backends", nargs="+", default=["int8", "torch"], choices=["int8", "torch"])
    ap.add_argument("--speeds", nargs="+", default=["balanced", "accurate", "fast", "full"])
    ap.add_argument("--per-class", type=int, default=120, help="train images per class")
    ap.add_argument("--validate-per-class", type=int, default=0, help="val images per class (0: no check)")
    ap.add_argument("--validate-speeds", nargs="+", default=["balanced"])
    args = ap.parse_args(argv)

    from napari_cytodiffusion.model.onnx_backend import BACKEND_ENV

    args.work.mkdir(parents=True, exist_ok=True)
    for backend in args.backends:
        os.environ[BACKEND_ENV] = backend
        from napari_cytodiffusion.classify.anomaly import band_dims, fit_component
        from napari_cytodiffusion.classify.classifier import calibration_for
        from napari_cytodiffusion.model.folder import load_model, read_metadata, write_metadata

        model = load_model(args.model)
        if backend == "int8":
            from napari_cytodiffusion.model import int8_numerics

            stored = model.metadata.extra.get("int8", {}).get("numerics")
            if stored and not int8_numerics.matches(
                stored, model.inference_unet(), model.size, model.metadata.n_classes
            ):
                print(
                    f"{args.model}: its int8 constants were fitted on another machine's numerics; skipping int8"
                )
                continue
        platelet = model.classes.index("platelet")
        max_size = smallest_other(model, "platelet")
        train = collect(args.data, "train", args.per_class, args.work, model)
        for speed in args.speeds:
            meta = read_metadata(args.model)
            block = block_of(meta, backend, speed)
            if block is None or "anomaly" not in block:
                print(f"{backend} {speed}: no calibration block of its own; skipped")
                continue
            cal = calibration_for(model, speed)
            prof = {k: v for k, v in cal["anomaly"]["profile"].items() if k != "components"}
            thr = float(cal["anomaly"]["threshold"])
            spec = float(cal["anomaly"].get("specificity", 0.96))
            res = errors_of(model, train, backend, speed, f"train{args.per_class}", args.work)
            pred, feats = platelet_profiles(model, cal, res, train["allowed"], train["size"])
            sel = (pred == platelet) & (train["size"] <= max_size)
            source = (
                f"PBC train images, {args.per_class} per class: non-centre stained cells at most "
                f"{max_size:g} red cells across, all called platelet ({backend}, {speed})"
            )
            comp = fit_component(
                feats[sel], prof, platelet, COMPONENT, source, thr, spec, band_dims(), max_size
            )
            comp["fit_anomalous_share"] = shares(feats[sel], pred[sel], train["size"][sel], prof, comp, thr)
            if args.validate_per_class and speed in args.validate_speeds:
                val = collect(args.data, "val", args.validate_per_class, args.work, model)
                vres = errors_of(model, val, backend, speed, f"val{args.validate_per_class}", args.work)
                vpred, vfeats = platelet_profiles(model, cal, vres, val["allowed"], val["size"])
                vs = (vpred == platelet) & (val["size"] <= max_size)
                comp["val_anomalous_share"] = shares(
                    vfeats[vs], vpred[vs], val["size"][vs], prof, comp, thr
                ) | {"images": f"PBC val, {args.validate_per_class} per class"}
            block["anomaly"]["profile"]["components"] = [
                c for c in block["anomaly"]["profile"].get("components", []) if c.get("name") != COMPONENT
            ] + [comp]
            write_metadata(args.model, meta)
            seen = {k: comp[k] for k in ("fit_anomalous_share", "val_anomalous_share") if k in comp}
            print(
                f"{backend} {speed}: component from {comp['n']} platelets, scale {comp['scale']:.3f}; {seen}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
