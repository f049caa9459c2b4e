"""The *Analyze smears* widget: a folder of smears analysed in a worker, the cohort shown, results reopened."""

import json

import pandas as pd
from PIL import Image

from napari_cytodiffusion.sample_data import synthetic_smear


def test_analyze_smears_widget(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_cytodiffusion.widgets import batch as batch_widget
    from napari_cytodiffusion.widgets.batch import BatchWidget
    from napari_cytodiffusion.widgets.classify import ClassifyWidget

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for s in (1, 2):
        Image.fromarray(synthetic_smear(seed=s)[0]).save(inp / f"smear{s}.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (inp / "notes.txt").write_text("not an image")
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    # bad input: a notification, no worker
    w.run_button.clicked()
    assert w.worker is None and w.run_button.enabled
    w.input_dir.value = inp
    w.pattern.value = "*.jpg"
    w.out_dir.value = out
    w.run_button.clicked()  # the pattern matches nothing
    assert w.worker is None
    w.pattern.value = ""
    w.speed.value = "fast"
    w.gpu.value = True  # Cellpose on a GPU when there is one (the CPU here); the classifier's device: auto
    assert w.options()["segmentation"]["gpu"] is True and w.options()["device"] == "auto"
    w.run_button.clicked()
    qtbot.waitUntil(lambda: w.worker is not None and w.run_button.enabled, timeout=300_000)
    cohort = pd.read_csv(out / "cohort.csv").set_index("image")
    assert cohort.loc["broken.png", "status"] == "error"
    assert (cohort.loc[["smear1.png", "smear2.png"], "status"] == "ok").all()
    assert w.status.value.startswith("2 analysed, 1 failed")
    assert len(w.table.data.to_list()) == 3 and w.table.column_headers[0] == "image"
    shown = {r[0]: r for r in w.table.data.to_list()}
    assert shown["smear1.png"][1] == "ok" and "cannot read" in shown["broken.png"][-1]
    assert w.result.choices == ("smear1.png", "smear2.png")  # only finished images can be opened
    check = json.loads((out / "cohort_domain_check.json").read_text())
    assert f"{check['n_anomalous']} of {check['n']} classified cells over 2 images" in w.cohort_line.value
    assert "white-cell differential of" in w.cohort_line.value  # both fields' white cells pooled
    summary = json.loads((out / "smear1_summary.json").read_text())
    assert summary["audit"]["parameters"]["speed"] == "fast"
    # the review page, written by the run, is written again in a worker and opened in the browser
    page = out / "report.html"
    assert page.is_file()
    page.unlink()
    opened = []
    monkeypatch.setattr(batch_widget, "open_in_browser", lambda p: opened.append(p) or True)
    w.report_button.clicked()
    qtbot.waitUntil(lambda: bool(opened) and w.run_button.enabled, timeout=60_000)
    assert opened == [page] and "smear2.png #" in page.read_text(encoding="utf-8")
    assert w.status.value == f"report: {page}"
    # a second run skips what is done; the table of a folder is shown as soon as it is chosen
    w.run_button.clicked()
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=300_000)
    assert "2 done before" in w.status.value
    other = BatchWidget(viewer)
    other.out_dir.value = out
    assert len(other.table.data.to_list()) == 3
    # a finished image opens for review in the Classify cells widget
    w.result.value = "smear2.png"
    w.open_button.clicked()
    _, review = viewer.window.add_plugin_dock_widget("napari-cytodiffusion", "Classify cells")
    assert isinstance(review, ClassifyWidget)
    qtbot.waitUntil(lambda: review.result is not None, timeout=120_000)
    assert "smear2 cells" in [layer.name for layer in viewer.layers]
    assert len(viewer.layers["smear2 cells"].features) == len(pd.read_csv(out / "smear2_cells.csv"))


def test_analyze_smears_widget_cancel_keeps_finished_images(make_napari_viewer, qtbot, tmp_path):
    from napari_cytodiffusion.widgets.batch import BatchWidget

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for s in range(4):
        Image.fromarray(synthetic_smear(seed=s)[0]).save(inp / f"s{s}.png")
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.input_dir.value, w.out_dir.value, w.speed.value = inp, out, "fast"
    w.run_button.clicked()
    qtbot.waitUntil(lambda: (out / "s0_summary.json").is_file(), timeout=300_000)
    w.cancel_button.clicked()
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=120_000)
    assert w.status.value == "cancelled"
    done = sorted(f.name for f in out.glob("*_summary.json"))
    assert 1 <= len(done) < 4  # stopped within the run, finished images kept ...
    assert not list(out.glob(".*"))  # ... and nothing half-written
    assert len(w.table.data.to_list()) == len(done)


def test_analyze_smears_widget_one_slide_per_sub_folder(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_cytodiffusion.widgets import batch as batch_widget
    from napari_cytodiffusion.widgets.batch import BatchWidget

    inp, out = tmp_path / "in", tmp_path / "out"
    for name, seed in (("slide A", 1), ("slide B", 2)):
        (inp / name).mkdir(parents=True)
        Image.fromarray(synthetic_smear(seed=seed)[0]).save(inp / name / "field1.png")
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.input_dir.value, w.out_dir.value, w.speed.value = inp, out, "fast"
    w.run_button.clicked()  # one folder: both fields would write field1_*
    assert w.worker is None
    w.by_folder.value = True
    w.run_button.clicked()
    qtbot.waitUntil(lambda: w.worker is not None and w.run_button.enabled, timeout=300_000)
    assert w.status.value.startswith("2 analysed, 0 failed")
    slides = pd.read_csv(out / "slides.csv")
    assert list(slides["slide"]) == ["slide A", "slide B"]
    # the table shows one slide at a time; its review and report are that slide's
    assert not w.slide.native.isHidden() and w.slide.choices == ("slide A", "slide B")
    assert w.slide.value == "slide A" and w.results_folder() == out / "slide A"
    assert w.cohort_line.value.startswith("2 slides;") and "Slide slide A" in w.cohort_line.value
    w.slide.value = "slide B"
    assert w.results_folder() == out / "slide B" and w.result.choices == ("field1.png",)
    shown = w.table.data.to_list()
    assert len(shown) == 1 and int(shown[0][2]) == pd.read_csv(out / "slide B" / "cohort.csv")["n_cells"][0]
    opened = []
    monkeypatch.setattr(batch_widget, "open_in_browser", lambda p: opened.append(p) or True)
    w.report_button.clicked()
    qtbot.waitUntil(lambda: bool(opened) and w.run_button.enabled, timeout=60_000)
    assert opened == [out / "slide B" / "report.html"]
    # a plain output folder hides the slide choice again
    w.out_dir.value = tmp_path
    assert w.slide.native.isHidden() and w.results_folder() == tmp_path
