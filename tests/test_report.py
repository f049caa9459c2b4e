"""The review report: one HTML page per results folder (differential, alerts, flagged cells, cells by class)."""

import base64
import io
import json
import re

import numpy as np
import pandas as pd
from PIL import Image

from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.report.thumbnails import OUTSIDE, cell_thumbnail
from napari_cytodiffusion.sample_data import synthetic_smear


def _figures(page: str, section: str) -> list[str]:
    """The ``<figure>`` elements of one section of the page (between its heading and the next)."""
    start = page.index(f"<h2>{section}</h2>")
    end = page.find("<h2>", start + 1)
    return re.findall(r"<figure.*?</figure>", page[start : end if end > 0 else None], re.S)


def test_analyze_writes_a_report_of_every_classified_cell(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.fromarray(synthetic_smear(seed=3)[0]).save(inp / "smear<1>.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    assert main(["analyze", str(inp), "--out", str(out), "--speed", "fast"]) == 1
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text(encoding="utf-8")
    table = pd.read_csv(out / "smear<1>_cells.csv")
    cells = table[table["classified"]]
    assert len(cells) >= 3
    # the reasons a cell is flagged are written with it
    reasons = cells["flag_reason"].fillna("")
    assert ((reasons != "") == cells["flagged"]).all()
    assert set("; ".join(reasons).split("; ")) - {""} <= {
        "uncertain",
        "unlike the training cells",
        "wrong size for its appearance",
    }
    # every classified cell once in the gallery of its class, the file name escaped
    gallery = _figures(page, "Cells by class")
    assert len(gallery) == len(cells)
    for label, cls in zip(cells["label"], cells["class"], strict=True):
        assert sum(f"smear&lt;1&gt;.png #{label}</figcaption>" in f for f in gallery) == 1
        assert f"<h3 id='class-{cls}'>" in page
    assert "smear<1>" not in page
    # flagged cells first in each class's gallery; all of them under Review first
    review = _figures(page, "Review first")
    assert len(review) == int(cells["flagged"].sum())
    assert all('class="flagged"' in f for f in review)
    # the pooled differential as analyze computed it, the failed image with its error
    diff = json.loads((out / "cohort_differential.json").read_text())
    n = diff["leukocytes"]
    assert f"{n} white cell{'s' if n != 1 else ''} counted over 1 image;" in page
    assert "broken.png" in page and "cannot read" in page
    link = (inp / "smear<1>.png").resolve().as_uri()  # the field itself, to look at whole
    assert f"<a href='{link}'>smear&lt;1&gt;.png</a>" in page
    # each picture a 96 px JPEG of the cell, outlined in its class's colour
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)"', gallery[0]).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (96, 96)
    # what the model is for and cannot tell, linked from the model's name at the top
    about = page[page.index("<h2 id='about-model'>About the model</h2>") : page.index("<footer>")]
    assert "<a href='#about-model'>pbc32 (" in page
    for heading in (
        "intended use",
        "learnt from",
        "classes",
        "other cells",
        "not learnt",
        "measured",
        "limit",
    ):
        assert f"<tr><th>{heading}</th>" in about
    assert "blasts" in about and "band and segmented neutrophils together" in about
    assert "recall per class, weakest first: ig 0." in about and "AUROC 0.856" in about
    # the differential says which of its classes are wider than a haematologist's
    diff_part = page[page.index("<h2>White-cell differential</h2>") : page.index("<h2>Review first</h2>")]
    assert "As the model learnt its classes: " in diff_part
    assert "neutrophil: band and segmented neutrophils together, so no left shift is counted" in diff_part
    assert "erythroblast: nucleated red cells" in diff_part and "platelet:" not in diff_part

    # a user's corrections (a class of their own too) show as such; fewer pictures per class on request
    cells_csv = out / "smear<1>_cells.csv"
    first, second = cells["label"].iloc[0], cells["label"].iloc[1]
    table["corrected_class"] = table["corrected_class"].astype(object)
    table.loc[table["label"] == first, "corrected_class"] = "band"
    table.to_csv(cells_csv, index=False)
    other = tmp_path / "page.html"
    assert main(["report", str(out), "--out", str(other), "--max-per-class", "1"]) == 0
    page = other.read_text(encoding="utf-8")
    assert "<h3 id='class-band'>" in page
    band = [f for f in _figures(page, "Cells by class") if f"#{first}</figcaption>" in f]
    assert len(band) == 1 and 'class="corrected"' in band[0] and "band ← " in band[0]
    assert all(f"#{first}</figcaption>" not in f for f in _figures(page, "Review first"))
    biggest = cells["class"].value_counts()
    if biggest.iloc[0] > 1:
        assert f"{biggest.iloc[0] - 1} more not shown" in page
    # results of a model that is not here (another content hash): shown with a stand-in, whose card
    # is not the results' model's, so none is shown
    summary_path = out / "smear<1>_summary.json"
    original = summary_path.read_text()
    saved = json.loads(original)
    saved["audit"]["model"]["content_hash"] = "0" * 64
    summary_path.write_text(json.dumps(saved))
    assert main(["report", str(out), "--out", str(other)]) == 0
    page = other.read_text(encoding="utf-8")
    assert "not found here; shown with pbc32@" in page and "About the model" not in page
    summary_path.write_text(original)

    # the image moved away: the page is still written, the cells without pictures, and says why
    assert second != first
    (inp / "smear<1>.png").rename(tmp_path / "moved.png")
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "no cell pictures: the analysed image is no longer at" in page
    assert "data:image/jpeg" not in page and 'class="missing"' in page


def test_report_needs_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no smear results" in err[0]
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert main(["report", str(tmp_path), "--max-per-class", "0"]) == 2


def test_cell_thumbnail_keeps_one_magnification_and_shows_the_field_edge():
    image = np.full((60, 80, 3), 200, np.uint8)
    labels = np.zeros((60, 80), np.int32)
    labels[0:6, 0:6] = 7  # a small cell in the corner
    image[labels == 7] = (90, 40, 140)
    thumb = cell_thumbnail(image, labels, 7, (0, 0, 6, 6), size=48, outline=(255, 0, 0))
    assert thumb.shape == (48, 48, 3) and thumb.dtype == np.uint8
    assert (thumb[0, 0] == OUTSIDE).all()  # beyond the image's corner
    assert ((thumb == (255, 0, 0)).all(axis=2)).any()  # the mask's outline
    # at least 30 px of the image: the cell is drawn smaller, as beside bigger cells
    wide = cell_thumbnail(image, labels, 7, (0, 0, 6, 6), size=48, min_side=30)
    purple = (wide == (90, 40, 140)).all(axis=2).sum()
    assert (
        0
        < purple
        < (cell_thumbnail(image, labels, 7, (0, 0, 6, 6), size=48) == (90, 40, 140)).all(axis=2).sum()
    )


def test_classify_with_labels_writes_the_smears_report(tmp_path, capsys):
    import tifffile

    image, truth = synthetic_smear(seed=4)
    Image.fromarray(image).save(tmp_path / "field.png")
    tifffile.imwrite(tmp_path / "field_labels.tif", truth.astype(np.uint32))
    out = tmp_path / "out"
    args = ["classify", str(tmp_path / "field.png"), "--labels", str(tmp_path / "field_labels.tif")]
    assert main([*args, "--out", str(out), "--speed", "fast", "--cells", "all"]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text(encoding="utf-8")
    table = pd.read_csv(out / "field_cells.csv")
    assert len(_figures(page, "Cells by class")) == int(table["classified"].sum()) > 0
    assert "segmentation given labels" in page and page.count("data:image/jpeg") >= len(table)
