"""Bad and odd inputs: clear one-line errors (exit 2) or sensible results, never tracebacks or half files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_cytodiffusion.cli.main import main


def test_huge_image_is_segmented_in_tiles_with_bounded_memory():
    """A 20,000 x 20,000 field: blank tiles are skipped, memory stays far below a whole-image float copy."""
    code = r"""
import json, resource, numpy as np
from napari_cytodiffusion.sample_data import synthetic_smear
from napari_cytodiffusion.segmentation.cellpose_seg import segment
smear, _ = synthetic_smear()
img = np.full((20000, 20000), 235, np.uint8)          # 400 MB grayscale field
# cells in one tile's core only (tiles of 1024 px every 832 px): one Cellpose call, 575 of 576 tiles skipped as blank
img[9400:9640, 9400:9640] = smear[100:340, 200:440].mean(axis=-1).astype(np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
labels = segment(img, diameter=46.0, tile_size=1024, tile_overlap=192)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"n": int(labels.max()), "shape": labels.shape, "extra_gb": after - before,
                  "dtype": str(labels.dtype), "outside": int(labels[:8000].max())}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"] == [20000, 20000] and out["dtype"] == "uint32"
    assert out["n"] >= 3 and out["outside"] == 0
    # labels alone are 1.6 GB; a float32 RGB copy of the image would add 4.8 GB
    assert out["extra_gb"] < 3.5, out


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"this is not an image", ".png", "cannot read"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ".png", "cannot read"),  # truncated PNG
        (b"plain text", ".txt", ""),
        (b"II*\x00\x08\x00\x00\x00", ".tif", "cannot read"),  # truncated TIFF header
    ],
)
def test_segment_cli_unreadable_files_exit_2(tmp_path, capsys, content, suffix, message):
    f = tmp_path / f"bad{suffix}"
    f.write_bytes(content)
    assert main(["segment", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()  # the folder the failed run made is taken back


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 3, 3), "tiny.tif: image is too small (3x3 pixels)"),
        # five channels last: read as a stack its planes would be 64 x 5 pixels ("too small" said nothing)
        (
            (64, 64, 5),
            "tiny.tif: an image of shape (64, 64, 5) has 5 channels in its last axis; expected a grayscale or "
            "RGB(A) image, or a stack of them (planes first)",
        ),
        ((2, 64, 6, 3), "tiny.tif, plane 1: image is too small (64x6 pixels)"),
    ],
)
def test_segment_cli_names_the_file_of_an_image_it_cannot_segment(tmp_path, capsys, shape, message):
    tifffile.imwrite(tmp_path / "tiny.tif", np.zeros(shape, np.uint8))
    assert main(["segment", str(tmp_path / "tiny.tif"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--class", "all", "-n", "0"], "-n must be at least 1"),
        (["generate", "--class", "megakaryocyte", "-n", "1"], "unknown class"),
        (["generate", "--class", "all", "-n", "1", "--guidance", "-1"], "guidance must be 0"),
        (["evaluate", "--data", "{csv_no_class}"], "needs columns"),
        (["classify", "{empty_dir}"], "no input images"),
        (["analyze", "{empty_dir}"], "no input images"),
        (["analyze", "{text_file}"], "notes.txt: unsupported file type .txt"),
        (["analyze", "{empty_dir}", "--red-cell-px", "-3"], "--red-cell-px must be a positive"),
        (["classify", "{empty_dir}", "--red-cell-px", "nan"], "--red-cell-px must be a positive"),
        (
            ["analyze", "{empty_dir}", "--red-cell-px", "30", "--pool-scale"],
            "either --red-cell-px or --pool-scale",
        ),
        (["evaluate", "--data", "{csv_no_class}", "--model", "{no_model}"], "model"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label\na.png,x\n")
    subs = {
        "{csv_no_class}": str(csv),
        "{empty_dir}": str(tmp_path / "empty"),
        "{no_model}": str(tmp_path / "nomodel"),
        "{text_file}": str(tmp_path / "notes.txt"),
    }
    (tmp_path / "notes.txt").write_text("not an image")
    argv = [subs.get(a, a) for a in args] + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_image_paths_keep_the_images_of_folders_and_patterns(tmp_path):
    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.io.images import image_paths

    for name in ("a.png", "b.TIF", "labels.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    images = ["a.png", "b.TIF"]
    assert [p.name for p in image_paths([tmp_path])] == images
    assert [p.name for p in image_paths([str(tmp_path / "*")])] == images  # a pattern skips the table
    assert [p.name for p in image_paths([tmp_path / "a.png", tmp_path])] == images  # each image once
    with pytest.raises(InputError, match=re.escape("labels.csv: unsupported file type .csv")):
        image_paths([tmp_path / "a.png", tmp_path / "labels.csv"])  # named on its own: refused
    with pytest.raises(InputError, match="no input images"):
        image_paths([str(tmp_path / "*.txt")])


def test_infinite_values_and_one_cell_touching_every_border():
    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.crops import crops_from_labels
    from napari_cytodiffusion.io.images import to_rgb_float
    from napari_cytodiffusion.model.registry import get_model
    from napari_cytodiffusion.segmentation.table import cells_table

    img = np.full((64, 64), np.inf, np.float32)
    img[10:20, 10:20] = 0.5
    out = to_rgb_float(img)
    assert np.isfinite(out).all() and out.shape == (64, 64, 3)
    # one cell filling the whole field: it touches every border and still gets a crop and a class
    labels = np.ones((40, 40), np.uint32)
    table = cells_table(labels)
    assert len(table) == 1 and bool(table["touches_border"].iloc[0])
    model = get_model("default")
    rgb = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    crops, ids = crops_from_labels(rgb, labels, model.metadata.preprocessing)
    assert crops.shape == (1, model.size, model.size, 3) and list(ids) == [1]
    res = classify_crops(model, crops, speed="fast")
    assert len(res) == 1 and 0 <= res.p_correct[0] <= 1


def test_stack_is_segmented_plane_by_plane(tmp_path, capsys):
    """A (Z, Y, X, C) stack: labels per plane, and one cells table whose ``plane`` column says where."""
    import pandas as pd
    import tifffile

    from napari_cytodiffusion.export import read_labels_tiff
    from napari_cytodiffusion.sample_data import synthetic_smear
    from napari_cytodiffusion.segmentation.table import cells_table

    smear, _ = synthetic_smear()
    field = smear[:240, :320]
    stack = np.stack([field, np.full((240, 320, 3), 230, np.uint8), field])  # 4-D (Z, Y, X, C)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "stack.tif"), "--diameter", "46", "--out", str(out)]) == 0
    labels, meta = read_labels_tiff(out / "stack_labels.tif")
    assert labels.shape == (3, 240, 320) and labels[0].max() > 5 and labels[1].max() == 0
    scale = meta["parameters"]["segmentation"]  # the diameter of each plane, on record
    assert scale["diameter_from"] == ["given", "blank image", "given"]
    assert scale["diameter_used_px"] == [46, None, 46]
    assert np.array_equal(labels[0], labels[2])  # each plane on its own, numbered from 1
    with tifffile.TiffFile(out / "stack_labels.tif") as tif:  # planes, not the channels of an RGB image
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    table = pd.read_csv(out / "stack_cells.csv")
    n = int(labels[0].max())
    assert list(table["plane"]) == [0] * n + [2] * n and table.columns[0] == "plane"
    plane0 = cells_table(labels[0], field)
    assert np.allclose(table[table.plane == 0].drop(columns="plane").to_numpy(float), plane0.to_numpy(float))
    printed = capsys.readouterr().out
    assert re.search(rf"stack.tif: {2 * n} cells in 3 planes in [0-9.]+ s", printed), printed


@pytest.mark.parametrize("command", ["analyze", "segment"])
def test_images_that_would_share_outputs_are_refused_before_any_work(tmp_path, capsys, command):
    """slide1/f01.jpg and slide2/F01.png would write (or, resumed, skip) each other's NAME_* files."""
    from PIL import Image

    for folder, name in (("slide1", "f01.jpg"), ("slide2", "F01.png"), ("slide2", "f02.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / folder / name)
    out = tmp_path / "out"
    argv = [command, str(tmp_path / "slide1"), str(tmp_path / "slide2"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would write the same outputs (f01_*)" in err, err
    assert not [f for f in out.glob("*") if f.name != "analyze.log"] if out.exists() else True
    # one folder at a time, each into its own output folder, is fine
    if command == "segment":
        assert main([command, str(tmp_path / "slide2"), "--out", str(out / "slide2")]) == 0
        assert sorted(f.name for f in (out / "slide2").glob("*.tif")) == ["F01_labels.tif", "f02_labels.tif"]


def test_segment_cli_skips_a_bad_image_of_a_batch_and_segments_the_others(tmp_path, capsys):
    """One unreadable file among several: named on stderr, the others segmented, exit status 1."""
    from PIL import Image

    from napari_cytodiffusion.export import read_labels_tiff

    folder = tmp_path / "fields"
    folder.mkdir()
    field = np.full((96, 96, 3), 225, np.uint8)
    field[30:60, 30:60] = (150, 60, 90)
    Image.fromarray(field).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"this is not an image")
    Image.fromarray(field[::-1]).save(folder / "c.png")
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--diameter", "30", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("b.png: skipped: ") and "cannot read" in err[0], err
    assert err[1] == "1 of 3 images skipped: b.png"
    assert sorted(f.name for f in out.glob("*.tif")) == ["a_labels.tif", "c_labels.tif"]
    assert read_labels_tiff(out / "a_labels.tif")[0].max() >= 1
    assert "a.png:" in captured.out and "c.png:" in captured.out

    # when every image fails, the run fails as a bad input does: exit 2, nothing written, and the
    # output folder the run would have made is not left behind empty
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("x.png", "y.png"):
        (bad / name).write_bytes(b"not an image")
    assert main(["segment", str(bad), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[-1].endswith("none of the 2 images could be segmented (each is named above)")
    assert not (tmp_path / "out2").exists()
    # ... but a folder that was there before is kept, even when empty
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["segment", str(bad / "x.png"), "--out", str(kept)]) == 2
    assert kept.is_dir()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda lab: -lab.astype(np.int64), "positive cell ids; these have negative values"),
        (lambda lab: -lab.astype(np.float32), "positive cell ids; these have negative values"),
        (lambda lab: lab.astype(np.float64) * 2**40, "label ids up to 4,294,967,295 (uint32) are supported"),
        (lambda lab: lab.astype(np.float32) + 0.5, "labels must be whole numbers"),
        (lambda lab: np.where(lab > 0, np.nan, 0.0), "labels must be whole numbers"),
        (lambda lab: lab.astype(np.uint64) * 2**40, "label ids up to 4,294,967,295 (uint32) are supported"),
        (lambda lab: np.stack([lab] * 3, -1), "do not match the image"),
    ],
)
def test_labels_a_smear_cannot_have_are_refused_in_one_line(make, message, tiny_model):
    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.pipeline import analyze
    from napari_cytodiffusion.sample_data import synthetic_smear

    image, truth = synthetic_smear(seed=1, height=160, width=200, n_rbc=8, n_wbc=1, n_platelets=0)
    with pytest.raises(InputError, match=re.escape(message)):
        analyze(image, model=str(tiny_model), labels=make(truth), speed="fast")


def test_labels_saved_as_float_or_with_very_large_ids_keep_their_ids(tiny_model):
    """Whole-number float labels are read as integers; ids beyond what the measurements can index per id
    (here up to ~3e9) are measured as 1..N and given back: the table and the labels keep the user's ids."""
    import pandas as pd

    from napari_cytodiffusion.pipeline import analyze
    from napari_cytodiffusion.sample_data import synthetic_smear

    image, truth = synthetic_smear(seed=1, height=160, width=200, n_rbc=8, n_wbc=1, n_platelets=0)
    kw = {"model": str(tiny_model), "speed": "fast", "cells": "all"}
    plain = analyze(image, labels=truth, **kw)
    as_float = analyze(image, labels=truth.astype(np.float32), **kw)
    pd.testing.assert_frame_equal(as_float.table, plain.table, check_dtype=False)
    big = truth.astype(np.uint64) * 2**28
    wide = analyze(image, labels=big, only_labels=[3 * 2**28, 5 * 2**28], **kw)
    assert np.array_equal(wide.labels, big.astype(np.uint32)) and wide.labels.dtype == np.uint32
    assert list(wide.table["label"]) == [int(v) * 2**28 for v in plain.table["label"]]
    assert list(wide.table.loc[wide.table["classified"], "label"]) == [3 * 2**28, 5 * 2**28]
    same = plain.table.set_index("label")
    for row in wide.table[wide.table["classified"]].itertuples():
        assert np.isclose(row.area, same.loc[row.label // 2**28, "area"])
