"""Reopening saved smear results (analyze / classify --labels / demo / export) for review."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.errors import InputError
from napari_cytodiffusion.sample_data import synthetic_smear


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """One synthetic smear through `analyze --pool-scale` (fast preset)."""
    root = tmp_path_factory.mktemp("saved")
    (root / "in").mkdir()
    Image.fromarray(synthetic_smear(seed=5)[0]).save(root / "in" / "smear.png")
    assert (
        main(["analyze", str(root / "in"), "--out", str(root / "out"), "--speed", "fast", "--pool-scale"])
        == 0
    )
    return root


def test_read_smear_outputs_gives_back_what_analyze_wrote(analyzed, tmp_path):
    from napari_cytodiffusion.export import read_labels_tiff
    from napari_cytodiffusion.io.results import read_smear_outputs, saved_image, saved_model

    out = analyzed / "out"
    for name in ("smear_summary.json", "smear_cells.csv", "smear_labels.tif"):  # any of the three files
        saved = read_smear_outputs(out / name)
        assert saved.stem == "smear"
    res = saved.result
    assert np.array_equal(res.labels, read_labels_tiff(out / "smear_labels.tif")[0])
    table = pd.read_csv(out / "smear_cells.csv")
    assert len(res.table) == len(table) and list(res.table.columns) == list(table.columns)
    assert (res.table["class"] != "").all() and (res.table["corrected_class"] == "").all()
    assert (
        res.table["classified"].dtype == bool and res.table["classified"].sum() == res.summary["n_classified"]
    )
    written = json.loads((out / "smear_summary.json").read_text())
    assert res.summary == {k: v for k, v in written.items() if k != "audit"}
    assert res.parameters["speed"] == "fast" and res.parameters["red_cell_px_from"] == "pooled"
    assert saved.image_path == (analyzed / "in" / "smear.png").resolve()
    image, warning = saved_image(saved)
    assert image.shape[:2] == res.labels.shape and warning is None
    model, warning = saved_model(saved)
    assert model.metadata.content_hash == saved.model["content_hash"] and warning is None

    # the image moved: a clear message, and its new place can be given; an edited image is said so
    moved = tmp_path / "moved.png"
    moved.write_bytes(saved.image_path.read_bytes())
    saved.image_path = tmp_path / "gone.png"
    with pytest.raises(InputError, match="no longer at"):
        saved_image(saved)
    assert saved_image(saved, moved)[1] is None
    Image.fromarray(synthetic_smear(seed=6)[0]).save(moved)
    assert "has changed since it was analysed" in saved_image(saved, moved)[1]
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(moved)
    with pytest.raises(InputError, match="not its image"):
        saved_image(saved, moved)


def test_bad_saved_results_are_clear_errors(analyzed, tmp_path):
    from napari_cytodiffusion.export import write_labels_tiff
    from napari_cytodiffusion.io.results import output_files, read_smear_outputs

    with pytest.raises(InputError, match="not a smear result"):
        read_smear_outputs(tmp_path / "notes.json")
    stem, files = output_files(tmp_path / "summary.json")  # demo's outputs have no stem
    assert stem == "" and files["labels"].name == "labels.tif" and files["cells"].name == "cells.csv"
    for name in ("smear_summary.json", "smear_cells.csv"):
        (tmp_path / name).write_bytes((analyzed / "out" / name).read_bytes())
    with pytest.raises(InputError, match=r"smear_labels\.tif is missing"):
        read_smear_outputs(tmp_path / "smear_summary.json")
    write_labels_tiff(np.ones((20, 20), np.uint32), tmp_path / "smear_labels.tif")  # another smear's labels
    with pytest.raises(InputError, match="do not belong together"):
        read_smear_outputs(tmp_path / "smear_cells.csv")
    (tmp_path / "smear_summary.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the result"):
        read_smear_outputs(tmp_path / "smear_summary.json")


def test_open_saved_result_in_napari(make_napari_viewer, qtbot, analyzed, tmp_path):
    from napari_cytodiffusion.io.results import read_smear_outputs, saved_image
    from napari_cytodiffusion.widgets.classify import ClassifyWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)), name="smear")  # a user layer of the same name: kept
    widget = ClassifyWidget(viewer)
    widget.open_saved(analyzed / "out" / "smear_summary.json")
    qtbot.waitUntil(lambda: widget.result is not None, timeout=120_000)
    assert viewer.layers["smear"].data.shape == (8, 8)
    image, labels, points = (
        viewer.layers["smear [2]"],
        viewer.layers["smear labels"],
        viewer.layers["smear [2] cells"],
    )
    table = pd.read_csv(analyzed / "out" / "smear_cells.csv")
    assert image.rgb and np.array_equal(np.unique(labels.data)[1:], np.sort(table["label"].to_numpy()))
    assert len(points.features) == len(table) and list(points.features["class"]) == list(table["class"])
    assert "px across (pooled: " in widget.legend.value
    # corrections are exported back beside the result unless another folder is chosen
    assert Path(str(widget.export_dir.value)) == (analyzed / "out").resolve()
    # review as after a fresh run: inspect a classified cell, correct it, export with the saved scale
    row = int(np.flatnonzero(points.features["classified"].to_numpy())[0])
    widget.inspect(row)
    points.selected_data = {row}
    widget.correct_to.value = "monocyte"
    widget.apply_correction()
    widget.export(tmp_path / "review")
    qtbot.waitUntil(lambda: bool(widget.exported), timeout=120_000)
    files = widget.exported
    # the review page of the export folder shows the cells, cut from the reopened image's file
    page = files["report"].read_text()
    assert files["report"].name == "report.html" and page.count("data:image/jpeg") >= 1
    assert json.loads(files["summary"].read_text())["audit"]["input"]["path"].endswith("smear.png")
    summary = json.loads(files["summary"].read_text())
    assert summary["reference_diameter"]["cells"].startswith("pooled")
    assert pd.read_csv(files["corrections"])["class"].tolist() == ["monocyte"]
    assert summary["n_corrected"] == 1 and summary["counts"]["monocyte"] >= 1  # counted as corrected
    assert widget.result["summary"]["n_corrected"] == 1  # the legend was recounted at once
    # exported again after a change of mind: another smear's corrections in the folder are kept,
    # this cell's picture moves from monocyte/ to lymphocyte/
    corrections = tmp_path / "review" / "corrections"
    (corrections / "basophil").mkdir()
    Image.new("RGB", (4, 4)).save(corrections / "basophil" / "other_cell3.png")
    first = pd.read_csv(corrections / "labels.csv")
    pd.DataFrame(
        {"path": ["basophil/other_cell3.png", *first["path"]], "class": ["basophil", "monocyte"]}
    ).to_csv(corrections / "labels.csv", index=False)
    widget.correct_to.value = "lymphocyte"
    widget.apply_correction()
    widget.exported = {}
    widget.export(tmp_path / "review")
    qtbot.waitUntil(lambda: bool(widget.exported), timeout=120_000)
    rows = pd.read_csv(corrections / "labels.csv")
    assert rows["class"].tolist() == ["basophil", "lymphocyte"] and rows["path"][1].startswith("lymphocyte/")
    assert (
        not list((corrections / "monocyte").glob("*.png"))
        and (corrections / "basophil" / "other_cell3.png").is_file()
    )
    assert all((corrections / p).is_file() for p in rows["path"])
    # a correction cleared (the model's call stands) leaves the training set at the next export
    widget.clear_correction()
    assert points.features["corrected_class"].iloc[row] == "" and widget.result["summary"]["n_corrected"] == 0
    widget.exported = {}
    widget.export(tmp_path / "review")
    qtbot.waitUntil(lambda: bool(widget.exported), timeout=120_000)
    assert pd.read_csv(corrections / "labels.csv")["class"].tolist() == ["basophil"]
    assert not list((corrections / "lymphocyte").glob("*.png"))
    assert not (tmp_path / "review" / "smear_agreement.json").exists()  # no labels left to agree with
    widget.undo_label()  # Ctrl+Backspace: the clearing taken back
    assert points.features["corrected_class"].iloc[row] == "lymphocyte" and points.selected_data == {row}
    widget.undo_label()  # and the change of mind before it
    assert points.features["corrected_class"].iloc[row] == "monocyte"
    # fine-tuning on the reopened result re-classifies at the saved (pooled) scale and says so
    for i, cls in enumerate(["monocyte"] * 4 + ["lymphocyte"] * 4):
        points.selected_data = {i}
        widget.correct_to.value = cls
        widget.apply_correction()
    widget.finetune.steps.value = 3
    widget.finetune.rank.value = 2
    widget.finetune.adapter_dir.value = str(tmp_path / "adapter")
    widget.finetune.run_button.clicked()
    qtbot.waitUntil(lambda: widget.result["points"] is not points, timeout=240_000)
    assert widget.result["summary"]["reference_diameter"] == summary["reference_diameter"]
    assert widget.result["params"]["red_cell_px"] == summary["reference_diameter"]["pixels"]
    assert "px across (pooled: " in widget.legend.value
    # the image moved: its new place, given in the widget, is used
    moved = tmp_path / "elsewhere.png"
    moved.write_bytes((analyzed / "in" / "smear.png").read_bytes())
    saved = read_smear_outputs(analyzed / "out" / "smear_summary.json")
    ghost = tmp_path / "ghost"  # a copy of the result whose audit names an image that is gone
    ghost.mkdir()
    for name in ("smear_cells.csv", "smear_labels.tif"):
        (ghost / name).write_bytes((analyzed / "out" / name).read_bytes())
    summary_json = json.loads((analyzed / "out" / "smear_summary.json").read_text())
    summary_json["audit"]["input"]["path"] = str(tmp_path / "gone.png")
    (ghost / "smear_summary.json").write_text(json.dumps(summary_json))
    first = widget.result
    widget.saved_file.value = ghost / "smear_summary.json"
    widget.saved_image.value = moved
    widget.open_button.clicked()
    qtbot.waitUntil(lambda: widget.result is not first, timeout=120_000)
    assert np.array_equal(widget.result["image"], saved_image(saved)[0])
    # a file that is not a result: a notification, nothing added
    n = len(viewer.layers)
    widget.open_saved(tmp_path / "review" / "corrections" / "labels.csv")
    qtbot.wait(500)
    assert len(viewer.layers) == n


def test_a_result_computed_from_an_array_finds_its_image_beside_it(analyzed, tmp_path):
    """demo (and a napari layer) hash the pixels, not a file: the image saved beside it is recognised."""
    from napari_cytodiffusion.cli.commands_smear import write_smear_outputs
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.io.results import read_smear_outputs, saved_image
    from napari_cytodiffusion.model.registry import get_model

    res = read_smear_outputs(analyzed / "out" / "smear_summary.json").result
    image = read_image(analyzed / "in" / "smear.png")
    write_smear_outputs(res, tmp_path, "field", get_model("default"), image=image)
    Image.fromarray(image).save(tmp_path / "field.png")
    saved = read_smear_outputs(tmp_path / "field_summary.json")
    assert saved.image_path is None and saved.image_was_array
    found, warning = saved_image(saved)
    assert np.array_equal(found, image) and warning is None
    Image.fromarray(synthetic_smear(seed=7)[0]).save(tmp_path / "field.png")  # other pixels: not its image
    with pytest.raises(InputError, match="records no image file"):
        saved_image(saved)


def test_drop_a_saved_result_on_napari(make_napari_viewer, analyzed, tmp_path):
    """The napari reader opens a saved result (its summary or cells table) as image, labels and cells."""
    from napari_cytodiffusion.io.reader import get_reader
    from napari_cytodiffusion.layers import hex_to_rgba
    from napari_cytodiffusion.model.registry import get_model

    out = analyzed / "out"
    assert get_reader(str(out / "smear_summary.json")) is not None
    assert get_reader(str(out / "smear_labels.tif")) is None  # left to the TIFF readers
    stray = tmp_path / "x_summary.json"
    stray.write_text("{}")
    assert get_reader(str(stray)) is None  # no cells table or labels beside it: not claimed
    viewer = make_napari_viewer()
    image, labels, points = viewer.open(str(out / "smear_cells.csv"), plugin="napari-cytodiffusion")
    assert (image.name, labels.name, points.name) == ("smear", "smear labels", "smear cells")
    table = pd.read_csv(out / "smear_cells.csv")
    assert image.rgb and labels.data.shape == image.data.shape[:2]
    assert list(points.features["class"]) == list(table["class"]) and len(points.data) == len(table)
    md = get_model("default").metadata
    row = table[table["classified"]].iloc[0]
    colour = md.colours[md.classes.index(row["class"])]
    assert np.allclose(labels.colormap.map(int(row["label"])), hex_to_rgba(colour), atol=1e-3)
    assert (
        points.symbol[int(np.flatnonzero(table["flagged"])[0])].value == "star"
        if table["flagged"].any()
        else True
    )
    # the image is gone: the labels and cells still open, with a warning
    ghost = tmp_path / "ghost"
    ghost.mkdir()
    for name in ("smear_cells.csv", "smear_labels.tif"):
        (ghost / name).write_bytes((out / name).read_bytes())
    summary = json.loads((out / "smear_summary.json").read_text())
    summary["audit"]["input"]["path"] = str(tmp_path / "gone.png")
    (ghost / "smear_summary.json").write_text(json.dumps(summary))
    from napari.utils.notifications import notification_manager

    said = []

    def hear(event):
        said.append(str(event.message))

    notification_manager.notification_ready.connect(hear)
    try:
        opened = viewer.open(str(ghost / "smear_summary.json"), plugin="napari-cytodiffusion")
    finally:
        notification_manager.notification_ready.disconnect(hear)
    assert [layer.name for layer in opened] == ["smear labels [1]", "smear cells [1]"]
    assert any("no longer at" in m for m in said), said


def test_keep_image_never_replaces_another_file(tmp_path):
    import tifffile

    from napari_cytodiffusion.export import keep_image

    image = synthetic_smear(seed=3)[0]
    path = keep_image(tmp_path / "field.tif", image)
    assert path == tmp_path / "field.tif" and np.array_equal(tifffile.imread(path), image)
    assert keep_image(path, image) == path  # the same pixels: kept as they are
    other = synthetic_smear(seed=4)[0]
    assert keep_image(path, other) is None and np.array_equal(tifffile.imread(path), image)
    (tmp_path / "notes.tif").write_text("not an image")
    assert keep_image(tmp_path / "notes.tif", image) is None
    assert (tmp_path / "notes.tif").read_text() == "not an image"
