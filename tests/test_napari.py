"""napari tests: real viewers (Xvfb + Mesa in CI), real models."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd

WIDGETS = ["Segment cells", "Classify cells", "Analyze smears", "Generate cells", "Train model"]


def test_manifest_validates():
    r = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-cytodiffusion"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_widgets_and_sample_load(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-cytodiffusion", name)
        assert widget is not None
        # no widget forces the window taller than a laptop screen: the tall ones scroll in their dock
        assert dock.minimumSizeHint().height() < 600, name
    viewer.open_sample("napari-cytodiffusion", "synthetic_smear")
    image, points = viewer.layers[-2], viewer.layers[-1]
    assert image.name == "sample smear (generated cells)" and image.data.shape == (600, 800, 3)
    assert points.name == "generated as" and len(points.data) == 8
    assert list(points.features["generated_as"])[:2] == ["basophil", "eosinophil"]


def _wait(qtbot, widget, timeout=240_000):
    qtbot.waitUntil(lambda: widget.worker is not None and widget.run_button.enabled, timeout=timeout)


def test_segment_then_classify_in_napari(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from napari_cytodiffusion.sample_data import synthetic_smear
    from napari_cytodiffusion.widgets.classify import ClassifyWidget
    from napari_cytodiffusion.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_smear()
    viewer.add_image(image, name="smear", rgb=True)
    viewer.add_labels(np.zeros(image.shape[:2], np.uint32), name="smear labels")  # a user layer: must survive
    seg = SegmentWidget(viewer)
    seg.image.value = viewer.layers["smear"]
    seg.run_button.clicked()
    _wait(qtbot, seg)
    assert "smear labels [2]" in viewer.layers  # never overwrites the user's layer
    assert viewer.layers["smear labels"].data.max() == 0
    labels = viewer.layers["smear labels [2]"]
    assert labels.data.max() >= 40
    assert labels.metadata["napari-cytodiffusion"]["segmentation"]["augment"] is False
    assert labels.metadata["napari-cytodiffusion"]["segmentation"]["max_size_fraction"] == 0.9
    assert labels.metadata["napari-cytodiffusion"]["segmentation"]["large_cells"] is True
    assert labels.metadata["napari-cytodiffusion"]["segmentation"]["platelets"] is True
    # the diameter it was segmented at is on record and in the status line
    used = labels.metadata["napari-cytodiffusion"]["segmentation"]["diameter_used_px"]
    assert labels.metadata["napari-cytodiffusion"]["segmentation"]["diameter_from"] in (
        "automatic",
        "model scale",
    )
    assert used > 0 and f"cells of {used:.0f} px" in seg.status.value
    seg.augment.value = True  # test-time augmentation reaches the parameters and is remembered
    seg.max_size_fraction.value = 0.5
    seg.large_cells.value = False
    seg.border_pad.value = 0.15
    seg.platelets.value = False
    seg.gpu.value = True  # Cellpose on a GPU when there is one (the CPU here)
    assert seg.params().border_pad == 0.15 and seg.params().platelets is False and seg.params().gpu
    assert seg.params().augment and seg.params().max_size_fraction == 0.5
    assert seg.params().large_cells is False
    seg.save_settings()
    again = SegmentWidget(viewer)
    assert again.augment.value is True and again.max_size_fraction.value == 0.5
    assert again.large_cells.value is False
    assert again.border_pad.value == 0.15 and again.platelets.value is False and again.gpu.value is True

    cls = ClassifyWidget(viewer)
    cls.image.value = viewer.layers["smear"]
    cls.labels_layer.value = labels
    cls.model_dir.value = str(tiny_model)
    cls.cells.value = "all"
    cls.speed.value = "fast"
    cls.size_check.value = False
    cls.red_cell_px.value = 12.5
    viewer.layers.selection.active = viewer.layers["smear"]  # change selection meanwhile
    cls.run_button.clicked()
    _wait(qtbot, cls)
    pts = viewer.layers["smear cells"]
    assert len(pts.data) == labels.data.max()
    assert {"class", "p_correct", "anomaly", "flagged", "p_redcell", "p_violet"} <= set(pts.features.columns)
    assert cls.result["params"]["size_check"] is False and cls.result["summary"]["size_check"] == "off"
    scale = cls.result["summary"]["reference_diameter"]
    assert scale["pixels"] == 12.5 and scale["cells"] == "given" and scale["whole_red_cells"] > 10
    # fill colour follows class colour from the model metadata
    md = cls.result["model"].metadata
    first = pts.features["class"].iloc[0]
    col = md.colours[md.classes.index(first)]
    assert np.allclose(pts.face_color[0][:3], [int(col[i : i + 2], 16) / 255 for i in (1, 3, 5)], atol=1e-3)
    assert "routine" in cls.legend.value.lower() or "review" in cls.legend.value.lower()
    cls.colour_by.value = "uncertainty"
    # correction + export
    pts.selected_data = {0}
    cls.correct_to.value = "violet"
    cls.apply_correction()
    assert pts.features["corrected_class"].iloc[0] == "violet"
    # a class the model lacks, typed in: given to the selected cell, then in the list, the keys and the legend
    pts.selected_data = {1}
    cls.new_class.value = "a/b"  # it names a folder of the training set: refused, nothing changes
    cls.apply_correction()
    assert pts.features["corrected_class"].iloc[1] in ("", None) or pd.isna(
        pts.features["corrected_class"].iloc[1]
    )
    cls.new_class.value = "  band  neutrophil "
    cls.apply_correction()
    assert pts.features["corrected_class"].iloc[1] == "band neutrophil" and cls.new_class.value == ""
    assert cls.correct_to.value == "band neutrophil" and "band neutrophil" in cls.correct_to.choices
    n_model = len(cls.result["model"].classes)
    assert f"Ctrl+{n_model + 1} band neutrophil" in cls.keys_line.value
    assert "band neutrophil (your class): 1" in cls.legend.value
    from napari_cytodiffusion.colours import user_class_colour
    from napari_cytodiffusion.layers import hex_to_rgba

    assert np.allclose(
        pts.face_color[1][:3], hex_to_rgba(user_class_colour(0, cls.result["model"].metadata.colours))[:3]
    )  # its own colour, not grey
    cls.new_class.value = "VIOLET"  # a model class in other case: the model's spelling
    assert cls._new_class_name() == "violet"
    cls.new_class.value = ""
    cls.export(tmp_path / "export")  # in a worker
    _wait(qtbot, cls)
    out = cls.exported
    for key in ("cells", "summary", "labels", "corrections", "report"):
        assert out[key].exists()
    import json

    exported = json.loads(out["summary"].read_text())  # recounted, with the run's other entries kept
    for key in ("size_check", "reference_diameter", "seconds", "verdict", "audit"):
        assert key in exported
    from napari_cytodiffusion.io.datasets import read_labelled

    corrections = read_labelled(out["corrections"])  # what Train model / `train --data` read
    assert sorted(corrections.classes) == ["band neutrophil", "violet"] and corrections.paths[0].is_file()


def test_generate_widget(make_napari_viewer, qtbot, tiny_model, tmp_path):
    from napari_cytodiffusion.widgets.generate import GenerateWidget

    viewer = make_napari_viewer()
    w = GenerateWidget(viewer)
    # the model list: bundled and cached names, then a folder; the class list follows the choice
    assert w.model_name.value == "default" and w.model_name.choices[-1] == "folder…"
    assert "neutrophil" in w.cls.choices
    assert w.model_info.value.startswith("pbc32: 8 classes")  # what the chosen model is
    # hovering shows its card: what it is for, never learnt and was measured to miss
    assert w.model_info.tooltip.startswith("<qt><b>intended use</b>: research and teaching")
    assert "<b>not learnt</b>: blasts" in w.model_info.tooltip and "AUROC 0.856" in w.model_info.tooltip
    w.model_dir.value = str(tiny_model)  # a folder set from Python switches the list to it
    assert w.model_name.value == "folder…"
    assert w.cls.choices == ("all", "redcell", "violet")
    assert w.model_info.value.startswith("tiny: 2 classes")
    assert "<b>classes</b>: 2: redcell, violet" in w.model_info.tooltip
    w.model_dir.value = str(tiny_model.parent)  # not a model: said on the line, nothing raised
    assert w.model_info.value.startswith("cannot use this model:") and not w.model_info.tooltip
    assert w.cls.choices == ("all",)  # no classes offered until it is a model
    w.model_dir.value = str(tiny_model)
    w.cls.value = "violet"
    w.count.value = 3
    w.steps.value = 3
    w.run_button.clicked()
    # changed while it runs (the model loads in the worker): the result is still what was asked
    w.cls.value, w.montage.value = "redcell", False
    _wait(qtbot, w)
    assert "generated redcell" not in viewer.layers
    layer = viewer.layers["generated violet"]
    assert layer.data.shape == (3, 16, 16, 3)
    assert layer.metadata["napari-cytodiffusion"]["frames"][0] == {"class": "violet", "seed": 0}
    montage = viewer.layers["generated violet montage"]  # beside the stack's frame, not over it
    assert montage.translate[1] >= layer.data.shape[2]
    w.export_to(tmp_path / "generated")  # what *Export last result…* does after asking for a folder
    files = sorted((tmp_path / "generated" / "violet").glob("*.png"))
    assert [f.name for f in files] == ["violet_seed0.png", "violet_seed1.png", "violet_seed2.png"]
    assert json.loads(files[0].with_suffix(".json").read_text())["steps"] == 3
    # the widget's default sampler is the library's, and gives the library's images
    from napari_cytodiffusion.generate.sampling import GenerateParams, generate
    from napari_cytodiffusion.model.folder import load_model

    assert w.scheduler.value == GenerateParams().scheduler == "dpm-sde"
    m = load_model(tiny_model)
    same = generate(m, [m.class_index("violet")] * 3, [0, 1, 2], GenerateParams(steps=3))
    assert np.array_equal(layer.data, same)
    # the model choice is remembered: the folder, and a later switch back to the default
    again = GenerateWidget(viewer)
    assert again.model_name.value == "folder…" and str(again.model_dir.value) == str(tiny_model)
    again.model_name.value = "default"
    again.save_settings()
    assert GenerateWidget(viewer).model_name.value == "default"


def test_bad_input_is_a_notification_not_a_crash(make_napari_viewer):
    from napari_cytodiffusion.widgets.classify import ClassifyWidget

    viewer = make_napari_viewer()
    w = ClassifyWidget(viewer)
    w.run_button.clicked()  # no layers: an error notification, no worker
    assert w.worker is None
    assert w.run_button.enabled


def _classify_synthetic(viewer, model_dir):
    """A viewer with the synthetic smear, its true labels and a Classify widget set up (not run)."""
    from napari_cytodiffusion.sample_data import synthetic_smear
    from napari_cytodiffusion.widgets.classify import ClassifyWidget

    image, truth = synthetic_smear()
    viewer.add_image(image, name="smear", rgb=True)
    viewer.add_labels(truth, name="truth")
    w = ClassifyWidget(viewer)
    w.image.value = viewer.layers["smear"]
    w.labels_layer.value = viewer.layers["truth"]
    w.model_dir.value = str(model_dir)
    w.cells.value = "all"
    w.speed.value = "fast"
    return viewer, w


def test_cell_inspector(make_napari_viewer, qtbot, tiny_model):
    viewer, w = _classify_synthetic(make_napari_viewer(), tiny_model)
    w.run_button.clicked()
    _wait(qtbot, w)
    w.inspector.target.value = "violet"
    before = w.inspector.image.value.shape
    w.result["points"].selected_data = {2}
    qtbot.waitUntil(
        lambda: w.inspector.image.value.shape[1] == 2 * w.inspector.image.value.shape[0], timeout=60_000
    )
    assert "cell 3" in w.inspector.title.value
    # beside P(correct) and the anomaly score, where they would flag the cell
    from napari_cytodiffusion.classify.classifier import calibration_for, flag_limits

    low, high = flag_limits(calibration_for(w.result["model"], w.result["params"]["speed"]))
    assert f"(flag below {low:.2f})" in w.inspector.title.value
    assert (f"(flag above {high:.2f})" in w.inspector.title.value) == bool(np.isfinite(high))
    # a cell re-called by its size names the class it looked like, which the size rules out
    row = w.result["points"].features.iloc[2].copy()
    row["class_by_appearance"], row["size"], row["size_implausible"] = "violet", 0.4, True
    crop = np.zeros((w.result["model"].size,) * 2 + (3,), np.uint8)
    w.inspector.show(row, crop, w.result["model"], None)
    assert "size 0.40 red-cell diameters: too small or large for violet, the class it looks like" in (
        w.inspector.title.value
    )
    w.inspector.show(w.result["points"].features.iloc[2], crop, w.result["model"], None)
    for panel in (w.inspector, w.finetune):  # sub-panels span the dock: no empty, indenting label column
        assert not panel._labeled_widget()._label_widget.visible
    assert "%" in w.inspector.bars.value
    assert before != w.inspector.image.value.shape
    # the panel gets its own height, not a text row's (it was drawn ~20 px tall)
    assert w.inspector.image.min_height == w.inspector.image.value.shape[0] >= 4 * w.result["model"].size
    # SDEdit counterfactual of the inspected cell: a new layer [original | redrawn as its class |
    # redrawn as the target | what the class changed], both redrawn from the same noise
    w.inspector.strength.value = 0.3
    w.counterfactual()
    qtbot.waitUntil(
        lambda: any(layer.name.startswith("cell 3 as violet") for layer in viewer.layers), timeout=60_000
    )
    layer = next(layer for layer in viewer.layers if layer.name.startswith("cell 3 as violet"))
    size = w.result["model"].size
    assert layer.data.shape == (size, 4 * size, 3)
    info = layer.metadata["napari-cytodiffusion"]
    assert info["counterfactual"]["to"] == "violet" and info["panels"][2] == "redrawn as violet"
    from napari_cytodiffusion.generate.sampling import sdedit

    m, violet = w.result["model"], w.result["model"].class_index("violet")
    cell = np.ascontiguousarray(layer.data[:, :size])  # the first panel is the inspected cell's crop
    assert np.array_equal(layer.data[:, 2 * size : 3 * size], sdedit(m, cell[None], violet, 0.3, seed=0)[0])


def test_active_learning_finetune_and_agreement(make_napari_viewer, qtbot, tiny_model, tmp_path):
    """Next-most-useful cell, corrections, fine-tune on them in a worker, re-classified layer, agreement."""
    from napari_cytodiffusion.adapt.active import labelling_queue

    viewer, w = _classify_synthetic(make_napari_viewer(), tiny_model)
    w.finetune.run_button.clicked()  # nothing classified yet: a notification, no worker
    assert w.finetune.worker is None
    w.run_button.clicked()
    _wait(qtbot, w)
    pts = w.result["points"]
    expected = int(labelling_queue(pts.features)[0])
    assert w.next_to_label() == expected
    assert pts.selected_data == {expected}
    assert "unlabelled" in w.inspector.queue_info.value
    # labelling from the keyboard (real key presses on the canvas): Ctrl+2 = the model's 2nd class,
    # then the next cell of the queue is selected; Ctrl+0 moves on without labelling; plain digits
    # stay napari's (nothing labelled)
    from qtpy.QtCore import Qt

    classes = w.result["model"].classes
    assert w.keys_line.value.startswith(f"keys: Ctrl+1 {classes[0]} · Ctrl+2 {classes[1]}")
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key_2, Qt.ControlModifier)
    assert pts.features["corrected_class"].iloc[expected] == classes[1]
    following = int(labelling_queue(pts.features)[0])
    assert following != expected and pts.selected_data == {following}
    qtbot.keyClick(canvas, Qt.Key_Backspace, Qt.ControlModifier)  # taken back: unlabelled, selected again
    assert pts.features["corrected_class"].fillna("").iloc[expected] == "" and pts.selected_data == {expected}
    qtbot.keyClick(canvas, Qt.Key_2, Qt.ControlModifier)
    assert pts.features["corrected_class"].iloc[expected] == classes[1] and pts.selected_data == {following}
    qtbot.keyClick(canvas, Qt.Key_9, Qt.ControlModifier)  # no 9th class: a notification, nothing labelled
    assert (pts.features["corrected_class"].fillna("") != "").sum() == 1
    pts.selected_data = set()
    qtbot.keyClick(canvas, Qt.Key_0, Qt.ControlModifier)
    assert pts.selected_data == {following}
    n = len(pts.data)
    viewer.layers.selection.active = pts
    qtbot.keyClick(canvas, Qt.Key_1)  # napari's "delete selected points", a slip beside Ctrl+1: kept
    assert len(pts.data) == len(pts.features) == n
    qtbot.keyClick(canvas, Qt.Key_Delete)  # a deliberate removal: the cell leaves counts and legend at once
    assert len(pts.features) == n - 1 and w.result["summary"]["n_classified"] == n - 1
    assert "1 cell removed from the result" in w.status.value
    for i, cls in enumerate(["redcell"] * 4 + ["violet"] * 4):
        pts.selected_data = {i}
        w.correct_to.value = cls
        w.apply_correction()
    assert w.next_to_label() not in range(8)  # labelled cells leave the queue
    w.finetune.steps.value = 3
    w.finetune.rank.value = 2
    w.finetune.adapter_dir.value = str(tmp_path / "adapter")
    w.finetune.run_button.clicked()
    _wait(qtbot, w.finetune)
    assert (tmp_path / "adapter" / "cytodiffusion_adapter.json").is_file()
    new = viewer.layers["smear cells [2]"]
    assert w.result["points"] is new and "smear cells" in viewer.layers  # the first result is kept
    assert list(new.features["corrected_class"].iloc[:8]) == ["redcell"] * 4 + ["violet"] * 4
    assert w.result["model"].short_id().startswith("adapter@")
    w.export(tmp_path / "export")
    _wait(qtbot, w)
    out = w.exported
    assert out["agreement"].exists() and (tmp_path / "export" / "smear_agreement.png").exists()
    # the image layer was made in Python (no file): a copy beside the result shows its cells on the
    # review page and brings it back when the result is reopened
    from napari_cytodiffusion.io.results import read_smear_outputs, saved_image

    assert out["image"] == tmp_path / "export" / "smear.tif"
    assert out["report"].read_text().count("data:image/jpeg") >= 8
    found, warning = saved_image(read_smear_outputs(out["summary"]))
    assert np.array_equal(found, viewer.layers["smear"].data) and warning is None


def test_classify_selection_and_layer_removed_midway(make_napari_viewer, qtbot, tiny_model):
    from napari_cytodiffusion.sample_data import synthetic_smear
    from napari_cytodiffusion.widgets.classify import ClassifyWidget

    viewer = make_napari_viewer()
    image, truth = synthetic_smear()
    viewer.add_image(image, name="smear", rgb=True)
    labels = viewer.add_labels(truth, name="truth")
    w = ClassifyWidget(viewer)
    w.image.value, w.labels_layer.value = viewer.layers["smear"], labels
    w.model_dir.value = str(tiny_model)
    w.cells.value, w.speed.value = "all", "full"
    w.only_selected.value = True
    labels.selected_label = 5
    w.run_button.clicked()
    viewer.layers.remove(labels)  # the user deletes the source layer while the worker runs
    qtbot.waitUntil(lambda: w.worker is not None and w.run_button.enabled, timeout=240_000)
    feats = viewer.layers["smear cells"].features
    assert feats["classified"].sum() == 1 and feats.loc[feats["classified"], "label"].item() == 5
    restored = viewer.layers["truth (restored)"]
    assert restored.data.max() == truth.max()
    assert w.result["labels_layer"] is restored


def test_widgets_read_full_resolution_and_the_shown_plane():
    """Multiscale layers give their finest level, stacks the plane on screen; too large is one clear error."""
    import pytest
    from napari.components import ViewerModel

    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.widgets._planes import shown_plane

    viewer = ViewerModel()
    fine = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    pyramid = viewer.add_image(
        [fine, fine[::2, ::2], fine[::4, ::4]], rgb=True, multiscale=True, name="slide"
    )
    assert np.array_equal(shown_plane(pyramid, viewer), fine)
    stack = viewer.add_image(
        np.arange(5)[:, None, None] * np.ones((5, 16, 16)), scale=(2, 1, 1), translate=(4, 0, 0)
    )
    viewer.dims.set_point(0, 8)  # world z 8 = plane 2 of the stack (translate 4, scale 2)
    assert shown_plane(stack, viewer).shape == (16, 16) and shown_plane(stack, viewer)[0, 0] == 2
    rgb_stack = viewer.add_image(
        np.stack([fine] * 3) * np.arange(3)[:, None, None, None].astype(np.uint8), rgb=True
    )
    viewer.dims.set_point(0, 1)
    assert np.array_equal(shown_plane(rgb_stack, viewer), fine * np.uint8(1))
    huge = viewer.add_image(np.broadcast_to(np.zeros((1, 1), np.uint8), (20_001, 20_000)), name="huge")
    with pytest.raises(InputError, match="huge is 20001 × 20000 pixels at full resolution"):
        shown_plane(huge, viewer)


def test_segment_a_multiscale_image_at_full_resolution(make_napari_viewer, qtbot):
    from napari_cytodiffusion.sample_data import synthetic_smear
    from napari_cytodiffusion.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_smear()
    layer = viewer.add_image(
        [image, image[::2, ::2], image[::4, ::4]], rgb=True, multiscale=True, name="scan"
    )
    seg = SegmentWidget(viewer)
    seg.image.value = layer
    seg.run_button.clicked()
    _wait(qtbot, seg)
    labels = viewer.layers["scan labels"]
    assert labels.data.shape == image.shape[:2] and labels.data.max() >= 40  # not the coarsest level's 1/16


def test_a_stack_plane_keeps_its_own_labels(make_napari_viewer, qtbot, tiny_model, tmp_path):
    """Labels of one plane of a stack say which plane; classifying another plane inside them is refused."""
    import pytest
    import tifffile

    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.io.results import read_smear_outputs, saved_image
    from napari_cytodiffusion.sample_data import synthetic_smear
    from napari_cytodiffusion.widgets.classify import ClassifyWidget
    from napari_cytodiffusion.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    field = synthetic_smear()[0][:240, :320]
    tifffile.imwrite(tmp_path / "fields.tif", np.stack([np.full_like(field, 230), field, field]))
    [stack] = viewer.open(str(tmp_path / "fields.tif"), plugin="napari")
    assert stack.rgb and stack.data.shape == (3, 240, 320, 3) and stack.source.path
    viewer.dims.set_point(0, 2)
    seg = SegmentWidget(viewer)
    seg.image.value = stack
    seg.diameter.value = 46.0
    seg.run_button.clicked()
    _wait(qtbot, seg)
    labels = viewer.layers["fields labels (plane 2)"]
    assert labels.metadata["napari-cytodiffusion"]["plane"] == [2] and labels.data.max() > 5
    w = ClassifyWidget(viewer)
    w.image.value, w.labels_layer.value = stack, labels
    w.model_dir.value, w.cells.value, w.speed.value = str(tiny_model), "all", "fast"
    viewer.dims.set_point(0, 1)  # the same field, but another plane: still refused
    with pytest.raises(InputError, match="outlines plane 2 of 'fields', but the viewer shows plane 1"):
        w._work()
    viewer.dims.set_point(0, 2)
    w.run_button.clicked()
    _wait(qtbot, w)
    assert len(viewer.layers["fields cells"].data) == labels.data.max()
    # exported, the result reopens with its plane (kept beside it), not with the stack's file
    w.export(tmp_path / "export")
    _wait(qtbot, w)
    saved = read_smear_outputs(tmp_path / "export" / "fields_summary.json")
    image, warning = saved_image(saved)
    assert np.array_equal(image, field) and warning is None
    # another image inside these labels: allowed (same field, say another stain), but said
    from napari.utils.notifications import notification_manager

    said = []

    def hear(notification):
        said.append(str(notification.message))

    notification_manager.notification_ready.connect(hear)
    try:
        w.image.value = viewer.add_image(field, rgb=True, name="other")
        assert w._work() is not None
    finally:
        notification_manager.notification_ready.disconnect(hear)
    assert "'fields labels (plane 2)' was segmented on 'fields', not on 'other'" in said


def test_closing_a_dock_lets_go_of_the_viewer(make_napari_viewer, qtbot, tiny_model):
    """napari's close button: keys unbound, layer events disconnected, the running job cancelled;
    a newer widget's keys survive an older widget's close."""
    from napari.utils.key_bindings import coerce_keybinding

    from napari_cytodiffusion.widgets.classify import ClassifyWidget
    from napari_cytodiffusion.widgets.segment import SegmentWidget

    viewer, w = _classify_synthetic(make_napari_viewer(), tiny_model)
    dock = viewer.window.add_dock_widget(w, name="Classify cells")
    inserted = viewer.layers.events.inserted
    before = len(inserted.callbacks)
    ctrl1 = coerce_keybinding("Control-1")
    ours = viewer.keymap[ctrl1]
    w.run_button.clicked()
    assert w.busy()
    dock.destroyOnClose()  # what the dock's close button does
    qtbot.waitUntil(lambda: not w.busy(), timeout=120_000)
    assert w.status.value == "cancelled" and "smear cells" not in viewer.layers
    assert ctrl1 not in viewer.keymap and coerce_keybinding("Control-0") not in viewer.keymap
    assert len(inserted.callbacks) == before - 2  # its own and the one napari made when docking
    viewer.add_labels(np.zeros((8, 8), np.uint32), name="later")
    assert "later" not in [
        layer.name for layer in w.labels_layer.choices
    ]  # the closed widget no longer follows
    # two widgets: closing the older one keeps the newer one's keys
    old, new = ClassifyWidget(viewer), ClassifyWidget(viewer)
    old_dock = viewer.window.add_dock_widget(old, name="old")
    viewer.window.add_dock_widget(new, name="new")
    old_dock.destroyOnClose()
    assert viewer.keymap[ctrl1] is not ours and viewer.keymap[ctrl1] is new._keys[0][1]
    seg_dock = viewer.window.add_dock_widget(SegmentWidget(viewer), name="Segment cells")
    n = len(inserted.callbacks)
    seg_dock.destroyOnClose()
    assert len(inserted.callbacks) == n - 2


def test_the_widgets_and_the_cli_segment_with_the_library_defaults(make_napari_viewer, tmp_path, monkeypatch):
    """A fresh Segment cells widget, the batch widget and the CLI start from ``SegmentParams()``
    (each spells its defaults out: a changed default must reach all three)."""
    from napari_cytodiffusion.cli.commands_smear import _seg_params
    from napari_cytodiffusion.cli.main import build_parser
    from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams
    from napari_cytodiffusion.widgets.batch import BatchWidget
    from napari_cytodiffusion.widgets.segment import SegmentWidget

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path))  # no saved settings
    viewer = make_napari_viewer()
    assert SegmentWidget(viewer).params() == SegmentParams()
    assert SegmentParams().border_pad == 0.05
    batch = BatchWidget(viewer)
    assert (batch.border_pad.value, batch.platelets.value) == (
        SegmentParams().border_pad,
        SegmentParams().platelets,
    )
    for command in ("segment", "analyze"):
        args = build_parser().parse_args([command, "x.png", "--out", str(tmp_path / "o")])
        assert _seg_params(args) == SegmentParams(), command


def test_a_changed_default_reaches_users_who_never_chose_otherwise(make_napari_viewer, tmp_path, monkeypatch):
    """Settings are saved with the defaults of their day. A value left at its default follows the
    default of a later version (the border mirror went 0 -> 0.05 after measurements; without this,
    everyone who had run the widget once would have kept 0); a value the user chose is kept; a file
    of an older version (no defaults saved) is read as it is, but for a default changed since then."""
    import json

    from napari_cytodiffusion.widgets.segment import SegmentWidget

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path))
    path = tmp_path / "widget_settings.json"
    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    seg.flow_threshold.value = 0.6
    seg.save_settings()
    data = json.loads(path.read_text())
    assert data["segment"]["border_pad"] == data["segment.defaults"]["border_pad"] == 0.05
    # as if saved by a version whose default was 0: the user never touched it, so 0.05 now
    data["segment"]["border_pad"] = data["segment.defaults"]["border_pad"] = 0.0
    path.write_text(json.dumps(data))
    again = SegmentWidget(viewer)
    assert (again.border_pad.value, again.flow_threshold.value) == (0.05, 0.6)
    # chosen by the user under the old default: kept
    data["segment"]["border_pad"] = 0.15
    path.write_text(json.dumps(data))
    assert SegmentWidget(viewer).border_pad.value == 0.15
    # an older version's file, values only: read as it is, but for a value at a default changed since
    path.write_text(json.dumps({"segment": {"border_pad": 0.0, "flow_threshold": 0.6}}))
    old = SegmentWidget(viewer)
    assert (old.border_pad.value, old.flow_threshold.value) == (0.05, 0.6)
    path.write_text(json.dumps({"segment": {"border_pad": 0.15}}))
    assert SegmentWidget(viewer).border_pad.value == 0.15
    path.write_text(json.dumps({"segment": ["not", "a", "dict"]}))  # a broken file changes nothing
    assert SegmentWidget(viewer).border_pad.value == 0.05
