import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.errors import InputError
from napari_cytodiffusion.sample_data import synthetic_smear
from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams, segment
from napari_cytodiffusion.segmentation.table import COLUMNS, cells_table


def test_smear_model_segments_sample_offline():
    image, truth = synthetic_smear()
    labels = segment(image)
    assert labels.dtype == np.uint32
    assert 0.8 * truth.max() <= labels.max() <= 1.2 * truth.max()
    table = cells_table(labels, image)
    assert list(table.columns) == COLUMNS
    assert table["touches_border"].any()
    # tiled processing finds about as many cells as one pass
    tiled = segment(image, SegmentParams(tile_size=320, tile_overlap=96, diameter=46.0))
    assert abs(int(tiled.max()) - int(labels.max())) <= 0.15 * labels.max()


def test_test_time_augmentation_reaches_cellpose_and_finds_the_same_cells():
    image, truth = synthetic_smear()
    plain = segment(image, SegmentParams(diameter=46.0))
    augmented = segment(image, SegmentParams(diameter=46.0, augment=True))
    assert not np.array_equal(plain, augmented)  # the flipped views changed the flows
    assert 0.8 * truth.max() <= augmented.max() <= 1.2 * truth.max()
    inter = np.logical_and(plain > 0, augmented > 0).sum()
    assert inter / np.logical_or(plain > 0, augmented > 0).sum() > 0.9


def test_segment_cli_output_is_clean_and_bad_settings_are_one_line(tmp_path):
    """torch warned about sparse-tensor checks (once per process, from Cellpose's mask step) on every
    CLI run; a fresh process shows whether the segmentation still lets it through."""
    import subprocess
    import sys

    from PIL import Image

    image, _ = synthetic_smear()
    Image.fromarray(image[:200, :200]).save(tmp_path / "f.png")
    code = "import sys; from napari_cytodiffusion.cli.main import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "segment", str(tmp_path / "f.png"), "--out"]
    ok = subprocess.run([*args, str(tmp_path / "ok")], capture_output=True, text=True)
    assert ok.returncode == 0 and "Warning" not in ok.stderr, ok.stderr
    assert (tmp_path / "ok" / "f_labels.tif").is_file()
    bad = subprocess.run(
        [*args, str(tmp_path / "bad"), "--max-size-fraction", "1.5"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: max_size_fraction must be in (0, 1]"
    ]


def test_blank_and_odd_images():
    assert segment(np.zeros((64, 64), np.uint8)).max() == 0
    assert segment(np.full((64, 64, 3), 1.0, np.float32)).max() == 0
    assert len(cells_table(np.zeros((10, 10), np.uint32))) == 0


def test_real_bbbc041_field(shared_data):
    from skimage import io, measure

    f = sorted((shared_data / "bbbc041" / "val" / "images").glob("*.jpg"))[0]
    labels = segment(io.imread(f))
    gt = measure.label(io.imread(shared_data / "bbbc041" / "val" / "masks" / (f.stem + ".png")) > 0)
    assert abs(int(labels.max()) - int(gt.max())) <= 0.25 * gt.max()


def test_demo_writes_four_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) >= 20
    assert cells["classified"].sum() >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cells"] == len(cells) and summary["audit"]["model"]["content_hash"]
    labels = tifffile.imread(out / "labels.tif")
    assert labels.max() == len(cells)
    assert (out / "generated_montage.png").stat().st_size > 5000
    assert (out / "smear.png").stat().st_size > 5000
    # the sample's cells were drawn by the shipped model, one per class: each is segmented, and the
    # classifier calls most of them the class they were generated as (7 of 8 when this was written)
    sample = summary["sample"]
    assert sample["generated_cells"] == 8 and sample["segmented"] == 8
    assert sample["called_as_generated"] >= 6
    truth = cells[cells["generated_as"].notna()]
    assert sorted(truth["generated_as"]) == sorted(summary["counts"])
    assert (truth["class"] == truth["generated_as"]).sum() == sample["called_as_generated"]
    printed = capsys.readouterr().out
    assert "segmented" in printed and f"{sample['called_as_generated']} called the class" in printed
    assert "never learnt and was measured to miss: napari-cytodiffusion models pbc32" in printed
    # its review page: every classified cell of the sample smear in the gallery of its class
    page = (out / "report.html").read_text(encoding="utf-8")
    gallery = page[page.index("<h2>Cells by class</h2>") :]
    assert gallery.count("<figure") == cells["classified"].sum() and "data:image/jpeg;base64," in gallery
    assert not list(out.glob(".*"))  # no temp files left behind


def test_missing_builtin_model_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from napari_cytodiffusion.cli.main import main as cli

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "empty_cache"))
    from PIL import Image

    Image.fromarray(synthetic_smear()[0]).save(tmp_path / "s.png")
    code = cli(["segment", str(tmp_path / "s.png"), "--seg-model", "cyto2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "empty_cache" in err and err.count("\n") == 1


def test_automatic_diameter_is_measured_on_whole_cells():
    from napari_cytodiffusion.io.images import RGBNormaliser
    from napari_cytodiffusion.segmentation.cellpose_seg import (
        SegmentParams,
        _median_diameter,
        estimate_diameter,
        load_segmenter,
    )

    labels = np.zeros((100, 100), np.uint32)
    labels[:10, :10] = 1  # cut by the border: left out of the interior median
    for i, (y, x) in enumerate([(30, 30), (30, 60), (60, 30), (60, 60)], start=2):
        labels[y : y + 20, x : x + 20] = i
    assert _median_diameter(labels, interior=True) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert _median_diameter(labels) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert _median_diameter(labels, interior=True, min_cells=5) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert _median_diameter(labels, min_cells=6) is None

    image, truth = synthetic_smear()
    d_true = _median_diameter(truth)
    d = estimate_diameter(load_segmenter(), RGBNormaliser(image), SegmentParams())
    assert d is not None and abs(d / d_true - 1) < 0.25


def test_automatic_diameter_copes_with_cells_far_larger_than_the_model_scale(shared_data):
    """A Raabin-WBC field (575 px, red cells ~120 px): at full resolution the network sees only a
    few fragments (median 5 px); trusting that rescaled the image 10x and took > 10 min on a dask
    worker. The coarser looks of the automatic diameter see the cells whole."""
    from skimage import io

    from napari_cytodiffusion.segmentation.cellpose_seg import _median_diameter, _plausible_diameter

    assert _plausible_diameter(5.1, 53.0) is None and _plausible_diameter(100.0, 53.0) == 100.0
    img = io.imread(shared_data / "txl_pbc" / "images" / "val" / "31f487cb-aea0-524f-a1bf-136dcda1899a.jpg")
    labels = segment(img)
    assert labels.max() >= 5
    assert 60 <= _median_diameter(labels) <= 160


def test_automatic_diameter_sees_the_cells_of_a_cellavision_field_whole(shared_data):
    """A PBC image enlarged to a CellaVision field's native 360 px (red cells ~80 px, 2.7x the
    model's scale). At full resolution the first look finds fragments near the model's scale
    (29 px here); trusting it cut the white cell at the centre into pieces. The coarser look sees
    the cells whole, so the estimate follows the enlargement and the white cell stays one cell."""
    from PIL import Image

    from napari_cytodiffusion.io.images import RGBNormaliser
    from napari_cytodiffusion.segmentation.cellpose_seg import estimate_diameter, load_segmenter

    small = Image.open(shared_data / "pbc" / "images" / "eosinophil" / "EO_377830.jpg").convert("RGB")
    big = np.asarray(small.resize((360, 360), Image.BICUBIC))
    small = np.asarray(small)
    seg, params = load_segmenter(), SegmentParams()
    d_small = estimate_diameter(seg, RGBNormaliser(small), params)
    d_big = estimate_diameter(seg, RGBNormaliser(big), params)
    assert d_small is not None and d_big is not None
    assert d_big / (d_small * 360 / 128) == pytest.approx(1.0, abs=0.15)
    info: dict = {}
    small_labels, big_labels = segment(small), segment(big, info=info)
    assert info == {"diameter_used_px": round(d_big, 1), "diameter_from": "automatic"}
    area_small = np.sum(small_labels == small_labels[64, 64]) * (360 / 128) ** 2
    area_big = np.sum(big_labels == big_labels[180, 180])
    assert small_labels[64, 64] and big_labels[180, 180]
    assert area_big / area_small == pytest.approx(1.0, abs=0.2)


def test_a_cell_filling_most_of_a_small_image_is_kept(shared_data):
    """A segmentation_WBC dataset-1 crop (120 px) whose white cell covers 42 % of it: Cellpose's
    default size limit (0.4 of the image) threw the found cell away; the project's default keeps it."""
    from skimage import io

    from napari_cytodiffusion.errors import InputError

    folder = shared_data / "segmentation_wbc" / "dataset_1"
    img = io.imread(folder / "002.png")
    cell = io.imread(folder / "002_mask.png") > 0
    cell = cell[..., 0] if cell.ndim == 3 else cell
    assert cell.mean() > 0.4

    def best_dice(labels):
        ids = [i for i in np.unique(labels[cell]) if i > 0]
        return max(
            (2 * (cell & (labels == i)).sum() / (cell.sum() + (labels == i).sum()) for i in ids), default=0
        )

    assert best_dice(segment(img)) > 0.9
    assert best_dice(segment(img, max_size_fraction=0.4)) == 0  # what Cellpose's default did
    with pytest.raises(InputError, match="max_size_fraction"):
        segment(img, max_size_fraction=0)


def test_large_cells_of_a_kaggle_field_are_found_whole(shared_data):
    """A Kaggle field (416 px, red cells 71 px by their boxes, 2.4x the model's 30 px scale).

    With the session-4 model the full-resolution look saw fragments and the field was segmented at
    the wrong scale until the nearest-scale rule; the session-5 model still estimates 40 px here
    (its full-resolution look sees 6 cells of median 40 px and stops), yet finds the cells whole.
    What matters to a user is checked: the cells, white cell included, are detected.
    """
    from skimage import io

    from napari_cytodiffusion.evaluate.segmentation import read_yolo, score_boxes

    name = "0254dbc1-2cdb-5660-9638-0e96c5330a83"
    img = io.imread(shared_data / "txl_pbc" / "images" / "val" / f"{name}.jpg")
    cls, boxes = read_yolo(shared_data / "txl_pbc" / "labels" / "val" / f"{name}.txt", *img.shape[:2])
    r = score_boxes(cls, boxes, segment(img))
    f1 = 2 * r["tp50"] / (r["n_true"] + r["n_pred"])
    assert f1 >= 0.8, r
    assert r["per_class"]["0"]["tp"] == r["per_class"]["0"]["n_true"] == 1  # the white cell


def test_evaluate_segmentation_masks_and_yolo(tmp_path):
    from PIL import Image

    from napari_cytodiffusion.segmentation.table import cells_table as table_of

    image, truth = synthetic_smear()
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "yolo").mkdir()
    Image.fromarray(image).save(tmp_path / "img" / "f1.png")
    tifffile.imwrite(tmp_path / "masks" / "f1.tif", truth)
    t = table_of(truth)
    h, w = truth.shape
    lines = [
        f"1 {(r.bbox_x0 + r.bbox_x1) / 2 / w} {(r.bbox_y0 + r.bbox_y1) / 2 / h} {(r.bbox_x1 - r.bbox_x0) / w} "
        f"{(r.bbox_y1 - r.bbox_y0) / h}"
        for r in t.itertuples()
    ]
    (tmp_path / "yolo" / "f1.txt").write_text("\n".join(lines))
    for mode in ("masks", "yolo"):
        out = tmp_path / f"out_{mode}"
        assert (
            main(
                [
                    "evaluate-segmentation",
                    "--images",
                    str(tmp_path / "img"),
                    f"--{mode}",
                    str(tmp_path / mode),
                    "--diameter",
                    "46",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        m = json.loads((out / "metrics.json").read_text())
        for key in ("ap50", "ap75", "precision", "recall", "f1", "seconds_per_image"):
            assert key in m
        assert m["f1"] > 0.8 and m["ap50"] > 0.7
    assert "rbc" in m["recall_per_class"] and m["per_class"]["rbc"]["f1"] > 0.8
    assert (
        main(
            [
                "evaluate-segmentation",
                "--images",
                str(tmp_path / "img"),
                "--masks",
                str(tmp_path / "yolo"),
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_evaluate_segmentation_of_saved_labels_against_points_and_part_masks(tmp_path):
    from PIL import Image
    from skimage.measure import regionprops

    image, truth = synthetic_smear()
    for d in ("img", "pred", "pts", "masks"):
        (tmp_path / d).mkdir()
    Image.fromarray(image).save(tmp_path / "img" / "f1.png")
    Image.fromarray(image).save(tmp_path / "img" / "f2.png")  # no reference: skipped and listed
    props = regionprops(truth)
    (tmp_path / "pts" / "f1.txt").write_text(
        "\n".join(f"{r.centroid[1]:.1f} {r.centroid[0]:.1f} 0" for r in props)
    )
    merged = truth.copy()
    a, b = props[0].label, props[1].label
    merged[merged == b] = a  # one predicted "cell" holding two points
    tifffile.imwrite(tmp_path / "pred" / "f1_labels.tif", merged)
    # a reference mask coding one cell's parts: cytoplasm 128, nucleus 255
    part = np.where(truth == a, 128, 0).astype(np.uint8)
    cy, cx = (int(v) for v in props[0].centroid)
    part[cy - 3 : cy + 4, cx - 3 : cx + 4] = 255
    Image.fromarray(part).save(tmp_path / "masks" / "f1_mask.png")

    def run(*args):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        code = main(["evaluate-segmentation", "--images", str(tmp_path / "img"), *args, "--out", str(out)])
        assert code == 0
        return json.loads((out / "metrics.json").read_text())

    m = run("--points", str(tmp_path / "pts"), "--pred", str(tmp_path / "pred"))
    n = len(props)
    assert m["n_true"] == n and m["n_pred"] == n - 1
    assert m["merged_cells"] == 1 and m["points_found"] == (n - 2) / n and m["points_missed"] == 0
    assert abs(m["count_error_mean_abs_pct"] - 100 / n) < 1e-9
    # whole cells of red-cell size: the synthetic field's cells all are, bar those cut by the border
    assert 0 <= m["red_cell_count_error_mean_abs_pct"] <= 100
    assert m["seconds_per_image"] is None and m["segmentation"]["labels_from"].endswith("pred")
    assert m["skipped_without_reference"] == ["f2.png"] and m["n_images"] == 1
    # parts of one cell: with --binary-masks one reference cell, found exactly
    tifffile.imwrite(tmp_path / "pred" / "f1_labels.tif", truth)
    m = run("--masks", str(tmp_path / "masks"), "--binary-masks", "--pred", str(tmp_path / "pred"))
    assert m["n_true"] == 1 and m["mean_dice"] == 1.0 and m["recall"] == 1.0
    assert m["reference_masks"] == {"binary": True, "connectivity": 8}
    m = run("--masks", str(tmp_path / "masks"), "--binary-masks", "--mask-connectivity", "4",
            "--pred", str(tmp_path / "pred"))  # fmt: skip
    assert m["n_true"] == 1 and m["reference_masks"]["connectivity"] == 4
    assert m["references_shared_by_predictions"] == 0 and m["pred_in_shared_reference"] == 0
    m = run("--masks", str(tmp_path / "masks"), "--pred", str(tmp_path / "pred"))
    assert m["n_true"] == 2 and m["mean_dice"] < 1.0  # cytoplasm and nucleus taken as two cells
    # masks beside their images (segmentation_WBC's NNN.png + NNN_mask.png): an image is never its own mask
    (tmp_path / "img" / "f1_mask.png").write_bytes((tmp_path / "masks" / "f1_mask.png").read_bytes())
    m = run("--masks", str(tmp_path / "img"), "--binary-masks", "--pred", str(tmp_path / "pred"))
    assert m["n_true"] == 1 and m["mean_dice"] == 1.0 and m["skipped_without_reference"] == ["f2.png"]
    (tmp_path / "img" / "f1_mask.png").unlink()
    # a colour image where a mask should be is a clear error, not a score
    Image.fromarray(image).save(tmp_path / "masks" / "f1_mask.png")
    assert main(["evaluate-segmentation", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "masks"),
                 "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "bad0")]) == 2  # fmt: skip
    Image.fromarray(part).save(tmp_path / "masks" / "f1_mask.png")
    # a label image of the wrong size is a clear error, and so is a missing one
    args = [
        "--images",
        str(tmp_path / "img"),
        "--points",
        str(tmp_path / "pts"),
        "--pred",
        str(tmp_path / "pred"),
    ]
    tifffile.imwrite(tmp_path / "pred" / "f1_labels.tif", truth[:10])
    assert main(["evaluate-segmentation", *args, "--out", str(tmp_path / "bad")]) == 2
    (tmp_path / "pred" / "f1_labels.tif").unlink()
    assert main(["evaluate-segmentation", *args, "--out", str(tmp_path / "bad2")]) == 2


def test_smear_model_folder_as_segmentation_model(tmp_path):
    import shutil

    from napari_cytodiffusion.errors import ModelError
    from napari_cytodiffusion.paths import DEFAULT_SMEAR_MODEL

    image = synthetic_smear()[0]
    folder = tmp_path / "my_smear_model"
    shutil.copytree(DEFAULT_SMEAR_MODEL, folder)
    np.testing.assert_array_equal(segment(image, model=str(folder)), segment(image))
    (folder / "cellpose_smear.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot load the smear model"):
        segment(image, model=str(folder))


def test_red_cell_count_leaves_out_border_cells_platelets_and_white_cells():
    from skimage.draw import disk

    from napari_cytodiffusion.evaluate.segmentation import red_cell_count, score_points

    lab = np.zeros((200, 300), np.int32)
    centres = [(40, 40), (40, 100), (40, 160), (100, 60), (100, 130), (160, 100)]
    for i, c in enumerate(centres, start=1):  # six whole red cells, diameter 24
        lab[disk(c, 12, shape=lab.shape)] = i
    lab[disk((150, 30), 3, shape=lab.shape)] = 7  # a platelet
    lab[disk((120, 230), 30, shape=lab.shape)] = 8  # a white cell
    lab[disk((5, 280), 12, shape=lab.shape)] = 9  # a red cell cut by the border
    assert red_cell_count(lab) == 6
    pts = np.array(centres, float)  # (row, col) of each red cell
    row = score_points(pts, lab)
    assert row["n_pred"] == 9 and row["n_pred_red_cells"] == 6 and row["found"] == 6
    assert red_cell_count(np.zeros((10, 10), np.int32)) == 0


def test_border_predictions_without_a_reference_are_counted():
    from napari_cytodiffusion.evaluate.segmentation import score_masks

    truth = np.zeros((50, 50), np.int32)
    truth[20:30, 20:30] = 1
    pred = truth.copy()
    pred[0:4, 10:16] = 5  # a sliver cut by the border, not in the reference
    pred[40:45, 40:45] = 7  # an interior cell the reference lacks: not a border case
    row = score_masks(truth, pred)
    assert row["n_pred"] == 3 and row["tp50"] == 1 and row["border_pred_without_reference"] == 1


def test_stained_cells_are_judged_against_the_fields_own_red_cells(shared_data):
    """A Raabin-WBC field of TXL-PBC whose red cells are violet enough to pass a fixed threshold.

    The fixed blue − green > 0.15 rule sent 14 of its red cells to the classifier (each then called
    a platelet, or worse); relative to the field's median cell only the white cell is stained.
    """
    from skimage import io

    from napari_cytodiffusion.evaluate.segmentation import box_iou, match_pairs, read_yolo
    from napari_cytodiffusion.io.images import to_rgb_float
    from napari_cytodiffusion.pipeline import (
        STAINED_CAP,
        STAINED_THRESHOLD,
        select_cells,
        stained_score,
        stained_threshold,
    )

    name = "3e08ca80-08dd-5b2c-b91e-60539d5b6a04"
    img = io.imread(shared_data / "txl_pbc" / "images" / "val" / f"{name}.jpg")
    cls, boxes = read_yolo(shared_data / "txl_pbc" / "labels" / "val" / f"{name}.txt", *img.shape[:2])
    rgb = to_rgb_float(img)
    labels = segment(img)
    table = cells_table(labels, rgb)
    ref = np.full(len(table), -1)
    pred_boxes = table[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(float)
    for i, j in match_pairs(box_iou(boxes, pred_boxes), 0.5):
        ref[j] = cls[i]
    score = stained_score(rgb, labels, table["label"].to_numpy())
    assert ((score > STAINED_THRESHOLD) & (ref == 1)).sum() >= 10  # the old rule's failure
    sel = select_cells(table, rgb, labels, "stained")
    assert sel[ref == 0].all() and sel.sum() == (ref == 0).sum() == 1, (score.round(3), ref)

    assert stained_threshold(np.full(5, 0.3)) == STAINED_THRESHOLD  # too few cells for a median
    assert stained_threshold(np.r_[np.full(20, 0.05), 0.4]) == pytest.approx(0.13)
    assert stained_threshold(np.full(20, 0.4)) == STAINED_CAP  # a field of nucleated cells keeps them


def test_sample_cells_were_drawn_by_the_shipped_model():
    from napari_cytodiffusion.model.registry import get_model
    from napari_cytodiffusion.sample_data import FIELD_RBC_DIAMETERS, generated_smear, load_generated_cells

    cells, classes, content_hash = load_generated_cells()
    model = get_model("default")
    # rerun scripts/make_sample_cells.py when the default model changes
    assert content_hash == model.metadata.content_hash
    assert classes == model.classes and cells.shape == (len(classes), model.size, model.size, 3)
    a, b = generated_smear(seed=0), generated_smear(seed=0)
    assert np.array_equal(a.image, b.image) and a.classes == classes  # deterministic
    c = generated_smear(seed=1)
    assert not np.allclose(a.centres, c.centres)
    from napari_cytodiffusion.sample_data import synthetic_smear

    for bad in (-1, 1.5):  # numpy's own error would not name the seed
        with pytest.raises(ValueError, match="seed must be a whole number, 0 or more"):
            generated_smear(seed=bad)
        with pytest.raises(ValueError, match="seed must be a whole number"):
            synthetic_smear(seed=bad)
    # every pasted cell lies whole inside the field, at the classifier's crop scale
    assert FIELD_RBC_DIAMETERS == model.metadata.preprocessing["smear"]["field_rbc_diameters"]
    side = FIELD_RBC_DIAMETERS * 46.0
    assert (a.centres >= side / 2 - 1).all()
    assert (a.centres[:, 0] <= 600 - side / 2 + 1).all() and (a.centres[:, 1] <= 800 - side / 2 + 1).all()


def test_a_gap_that_runs_diagonally_separates_cells_only_at_4_connectivity():
    """BBBC041Seg draws a thin gap between touching cells; where it runs diagonally, the cells on
    either side touch at pixel corners, and 8-connected components join them."""
    from napari_cytodiffusion.evaluate.segmentation import instances_from_mask, score_masks

    mask = np.zeros((50, 50), np.uint8)
    mask[5:45, 5:45] = 255
    rr = np.arange(5, 45)
    mask[rr, rr] = 0  # a one-pixel diagonal gap: two triangular cells
    mask[4, 45] = 255  # a pixel that touches one cell at a corner only
    eight = instances_from_mask(mask)
    four = instances_from_mask(mask, connectivity=4)
    assert eight.max() == 1 and four.max() == 2
    assert (four > 0).sum() == (mask > 0).sum() - 1  # the corner pixel is dropped at 4
    with pytest.raises(ValueError, match="4 or 8"):
        instances_from_mask(mask, connectivity=6)
    # the segmentation finds both cells: at 8 they share one reference, which neither matches
    row = score_masks(eight, four)
    assert row["tp50"] == 0 and row["references_shared_by_predictions"] == 1
    assert row["pred_in_shared_reference"] == 2
    row = score_masks(four, four)
    assert row["tp50"] == 2 and row["references_shared_by_predictions"] == 0
    assert row["pred_in_shared_reference"] == 0


def test_border_pad_outlines_red_cells_cut_by_the_border(shared_data, tmp_path, capsys):
    """A BCCD field of TXL-PBC val whose reference boxes include the cells cut by the border.

    Without the mirrored margin the network sees slivers and leaves most of them out; with it the
    same cells are outlined, while the field's interior cells stay as they were (red cells found: 19
    without, 21 with the default 0.05 diameters, 22 with 1 diameter, of 27 boxes).
    """
    from skimage import io

    from napari_cytodiffusion.evaluate.segmentation import read_yolo, score_boxes

    name = "89ca4a46-5d44-5b5c-86aa-58b58d448315"
    img = io.imread(shared_data / "txl_pbc" / "images" / "val" / f"{name}.jpg")
    cls, boxes = read_yolo(shared_data / "txl_pbc" / "labels" / "val" / f"{name}.txt", *img.shape[:2])
    plain = segment(img, SegmentParams(border_pad=0.0))
    padded = segment(img, SegmentParams(border_pad=1.0))
    assert padded.shape == plain.shape and padded.dtype == np.uint32
    assert np.array_equal(np.unique(padded), np.arange(padded.max() + 1))  # numbered 1..n
    r0, r1 = score_boxes(cls, boxes, plain), score_boxes(cls, boxes, padded)
    red0, red1 = r0["per_class"]["1"], r1["per_class"]["1"]
    assert red1["tp"] >= red0["tp"] + 3, (red0, red1)
    assert red1["fp"] <= red0["fp"] + 1
    # the extra cells are at the border; cells well inside the field are untouched
    inner = np.zeros(img.shape[:2], bool)
    inner[60:-60, 60:-60] = True
    agree = (
        np.logical_and(plain > 0, padded > 0)[inner].sum() / np.logical_or(plain > 0, padded > 0)[inner].sum()
    )
    assert agree > 0.97
    # the default mirrors a few pixels (0.05 diameters), which already outlines some of them
    default = score_boxes(cls, boxes, segment(img))["per_class"]["1"]
    assert red0["tp"] < default["tp"] < red1["tp"] and default["fp"] <= red0["fp"]
    with pytest.raises(InputError, match="border_pad"):
        segment(img[:64, :64], SegmentParams(border_pad=-1.0))
    # the CLI passes it through, and refuses a bad value in one line
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "field.png")
    assert (
        main(["segment", str(tmp_path / "field.png"), "--out", str(tmp_path / "o"), "--border-pad", "-1"])
        == 2
    )
    assert capsys.readouterr().err.strip() == "error: border_pad must be between 0 and 4 cell diameters"
    assert (
        main(["segment", str(tmp_path / "field.png"), "--out", str(tmp_path / "o"), "--border-pad", "1"]) == 0
    )
    saved = tifffile.imread(tmp_path / "o" / "field_labels.tif")
    assert saved.max() == padded.max()


def test_a_look_that_finds_no_cell_says_nothing_on_the_console(shared_data, caplog):
    """The coarsest look of the automatic diameter at a BBBC041 field (800 x 600, cells of ~57 px)
    sees them at an eighth of their size and finds none; Cellpose logs "no seeds found ... no masks
    found" for it, which reached every user's console beside "72 cells" (the logging module's
    last-resort handler prints warnings of an unconfigured logger). An empty look is expected."""
    import logging

    from skimage import io

    from napari_cytodiffusion.io.images import RGBNormaliser
    from napari_cytodiffusion.segmentation.cellpose_seg import estimate_diameter, load_segmenter

    image = io.imread(shared_data / "bbbc041" / "val" / "images" / "2b369d75-9c55-43e0-b352-d981aea544e3.jpg")
    with caplog.at_level(logging.WARNING):
        d = estimate_diameter(load_segmenter(), RGBNormaliser(image[..., :3]), SegmentParams())
    assert d == pytest.approx(57, rel=0.1)
    assert not [r for r in caplog.records if r.name.startswith("cellpose")]
    assert load_segmenter() is load_segmenter()  # loaded once, the filter installed once
