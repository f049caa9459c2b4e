"""The size check: calls a class's training sizes rule out are flagged and raise no alert."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cytodiffusion.classify.size import class_ranges, implausible, ranges_from_percentiles, size_ratio
from napari_cytodiffusion.model.registry import get_model
from napari_cytodiffusion.pipeline import UNCLASSIFIED, mark_sizes, summarize

EXTRA = {
    "class_sizes": {
        "unit": "typical cells",
        "range": {"erythroblast": [0.7, 1.9], "neutrophil": [1.3, 2.8], "platelet": [None, 1.6]},
    }
}


def test_ranges_and_implausible_calls():
    ranges = class_ranges(EXTRA)
    assert ranges["platelet"] == (0.0, 1.6) and ranges["erythroblast"] == (0.7, 1.9)
    assert class_ranges({}) == {} and class_ranges(None) == {}
    r = size_ratio(np.array([4.0, 10.0, 20.0, 40.0]), 10.0)
    np.testing.assert_allclose(r, [0.4, 1.0, 2.0, 4.0])
    assert np.isnan(size_ratio(np.array([3.0]), None)).all()
    called = ["erythroblast", "erythroblast", "platelet", "monocyte"]
    # a 0.4-cell erythroblast and a 2-cell platelet are ruled out; a class without a range never is
    assert implausible(called, r, ranges).tolist() == [True, False, True, False]
    assert not implausible(["platelet"], np.array([np.nan]), ranges).any()
    widened = ranges_from_percentiles({"a": 1.0}, {"a": 2.0}, margin=1.25)
    assert widened == {"a": [0.8, 2.5]}


def _table(diameters, classes, by_appearance=None):
    n = len(diameters)
    return pd.DataFrame(
        {
            "label": np.arange(1, n + 1),
            "equivalent_diameter": np.asarray(diameters, float),
            "classified": [c != UNCLASSIFIED for c in classes],
            "class": classes,
            "class_by_appearance": by_appearance or classes,
            "flagged": [False] * n,
            "anomaly": [0.1] * n,
        }
    )


def test_appearance_and_size_disagree_is_flagged_not_an_alert():
    ranges = class_ranges(EXTRA)
    names = ["erythroblast", "neutrophil", "platelet"]
    # ten red cells of 10 px; a 4 px blob that looks like an erythroblast, re-called platelet by
    # the size prior; a 20 px neutrophil; a 45 px blob no class fits, left as it looked
    looks = [UNCLASSIFIED] * 10 + ["erythroblast", "neutrophil", "erythroblast"]
    calls = [UNCLASSIFIED] * 10 + ["platelet", "neutrophil", "erythroblast"]
    d = [10] * 10 + [4, 20, 45]
    table = mark_sizes(_table(d, calls, looks), size_ratio(np.array(d, float), 10.0), ranges)
    assert table["size"].iloc[-3:].tolist() == pytest.approx([0.4, 2.0, 4.5])
    assert table["size_implausible"].tolist() == [False] * 10 + [True, False, True]
    assert table["flagged"].tolist() == [False] * 10 + [True, False, True]
    s = summarize(table, names)
    assert s["n_size_implausible"] == 2 and s["counts"] == {"erythroblast": 1, "neutrophil": 1, "platelet": 1}
    assert not any(r.startswith("erythroblast:") for r in s["reasons"])  # no class fits: no alert
    assert any(
        "erythroblast → platelet 1" in r and "erythroblast, no class fits 1" in r for r in s["reasons"]
    )
    assert s["verdict"] == "needs review"
    # an erythroblast of a red cell's size is an alert, as before
    calls[-3] = looks[-3] = "erythroblast"
    d[-3], d[-1] = 11, 20
    table = mark_sizes(_table(d, [*calls[:-1], "neutrophil"]), size_ratio(np.array(d, float), 10.0), ranges)
    s = summarize(table, names)
    assert s["n_size_implausible"] == 0 and any(
        r.startswith("erythroblast: 1 unflagged call") for r in s["reasons"]
    )
    # without ranges (a model without sizes, or the check off) nothing is ruled out
    assert not mark_sizes(_table(d, calls), size_ratio(np.array(d, float), 10.0), {})[
        "size_implausible"
    ].any()


def test_classifier_takes_the_best_allowed_class(shared_data):
    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image

    model = get_model("default")
    rows = pd.read_csv(shared_data / "pbc" / "labels.csv")
    rows = rows[rows.split == "val"].groupby("class").head(1).iloc[:4]
    crops = single_cell_crops(
        [read_image(shared_data / "pbc" / p) for p in rows.path], model.metadata.preprocessing
    )
    free = classify_crops(model, crops, speed="fast", seed=0)
    allowed = np.ones((4, model.metadata.n_classes), bool)
    allowed[np.arange(3), free.pred[:3]] = False  # rule out the first three cells' calls
    allowed[3] = False  # the last allows nothing: left free
    held = classify_crops(model, crops, speed="fast", seed=0, allowed=allowed)
    assert (held.by_appearance == free.pred).all() and free.by_appearance is None
    assert (held.pred[:3] != free.pred[:3]).all() and held.pred[3] == free.pred[3]
    for i in range(3):
        assert held.probs[i, free.pred[i]] == 0.0 and held.probs[i].sum() == pytest.approx(1.0)
        # the new call is the allowed class the free run ranked highest
        order = [j for j in np.argsort(-free.probs[i]) if allowed[i, j]]
        assert held.pred[i] == order[0]
    np.testing.assert_allclose(held.probs[3], free.probs[3])
    assert held.unet_calls.tolist() == free.unet_calls.tolist()  # the prior costs no UNet call


def test_shipped_models_carry_class_sizes():
    for name in ("pbc32", "pbc32-fast"):
        ranges = class_ranges(get_model(name).metadata.extra)
        model_classes = set(get_model(name).classes)
        assert set(ranges) == model_classes
        lo, hi = ranges["erythroblast"]
        assert 0.5 < lo < 1.0 < hi  # an erythroblast is about one red cell across
        assert ranges["platelet"][0] == 0.0 and ranges["platelet"][1] < ranges["neutrophil"][1]
        assert ranges["neutrophil"][0] > 1.0


def test_no_size_check_without_a_red_cell_reference(shared_data):
    """A field of a few cells, or one whose cells are mostly stained, has no red-cell size to compare with."""
    from napari_cytodiffusion.io.images import read_image, to_rgb_float
    from napari_cytodiffusion.layers import legend_html
    from napari_cytodiffusion.pipeline import analyze, size_reference_problem
    from napari_cytodiffusion.segmentation.table import cells_table

    field = sorted((shared_data / "txl_pbc" / "images" / "val").glob("*"))[0]
    image = read_image(field)
    res = analyze(image, speed="fast", seed=0)
    assert res.summary["size_check"] == "applied"
    rgb = to_rgb_float(image)
    assert size_reference_problem(res.table, rgb, res.labels) is None
    # keep only the classified (stained) cells and two red cells: too few, and mostly stained
    keep = (
        res.table["label"][res.table["classified"]].tolist()
        + res.table["label"][~res.table["classified"]].tolist()[:2]
    )
    labels = np.where(np.isin(res.labels, keep), res.labels, 0)
    assert "needs 8 or more" in size_reference_problem(cells_table(labels, rgb), rgb, labels)
    few = analyze(image, labels=labels, speed="fast", seed=0)
    assert few.summary["size_check"].startswith("not applied:") and not few.table["size_implausible"].any()
    assert "size check not applied" in legend_html(
        few.summary, get_model("default").classes, get_model("default").metadata.colours
    )
    assert (
        analyze(image, labels=labels, speed="fast", seed=0, size_check=False).summary["size_check"] == "off"
    )


def test_mostly_stained_field_has_no_red_cell_reference():
    from napari_cytodiffusion.pipeline import size_reference_problem
    from napari_cytodiffusion.segmentation.table import cells_table

    rgb = np.full((60, 120, 3), 0.9, np.float32)
    labels = np.zeros((60, 120), np.int32)
    for i in range(10):  # ten cells; seven violet (blue above green), three pink
        y, x = 5 + 25 * (i // 5), 5 + 22 * (i % 5)
        labels[y : y + 15, x : x + 15] = i + 1
        rgb[y : y + 15, x : x + 15] = (0.5, 0.3, 0.7) if i < 7 else (0.85, 0.6, 0.6)
    problem = size_reference_problem(cells_table(labels, rgb), rgb, labels)
    assert problem == "70% of the cells are stained, so the typical cell is not a red cell"
    labels[labels <= 4] = 0  # now 3 violet of 6: too few cells
    assert "6 cells" in size_reference_problem(cells_table(labels, rgb), rgb, labels)


def _field_with_cut_and_stained_cells():
    """Six whole pink red cells (14 px), ten cut by the border, three large violet cells."""
    rgb = np.full((100, 160, 3), 0.92, np.float32)
    labels = np.zeros((100, 160), np.int32)
    k = 0

    def cell(y, x, side, colour):
        nonlocal k
        k += 1
        labels[y : y + side, x : x + side] = k
        rgb[y : y + side, x : x + side] = colour

    for i in range(6):
        cell(25, 10 + 24 * i, 14, (0.85, 0.6, 0.6))
    for y in (0, 92):  # cut by the border: 8 px of them show
        for i in range(5):
            cell(y, 10 + 30 * i, 8, (0.85, 0.6, 0.6))
    for x in (20, 60, 100):
        cell(55, x, 30, (0.5, 0.3, 0.7))
    return rgb, labels


def test_reference_is_the_median_whole_red_cell():
    """Cells cut by the border look small and stained cells are not red cells: neither sets the scale."""
    from napari_cytodiffusion.pipeline import reference_diameter, stained_score
    from napari_cytodiffusion.segmentation.table import cells_table

    rgb, labels = _field_with_cut_and_stained_cells()
    table = cells_table(labels, rgb)
    score = stained_score(rgb, labels, table["label"].to_numpy())
    whole_red = np.sqrt(4 * 14 * 14 / np.pi)
    assert np.median(table["equivalent_diameter"]) != pytest.approx(whole_red)  # what the median of all gave
    assert reference_diameter(table, score) == (pytest.approx(whole_red), "whole red cells")
    # the score can come from the table, as the pipeline stores it
    assert reference_diameter(table.assign(stain_score=score))[0] == pytest.approx(whole_red)
    # fewer than three whole red cells: the whole cells of any kind, then all cells
    few = np.where(np.isin(labels, [3, 4, 5, 6]), 0, labels)
    t = cells_table(few, rgb)
    ref, how = reference_diameter(t, stained_score(rgb, few, t["label"].to_numpy()))
    assert how == "whole cells" and ref == pytest.approx(np.sqrt(4 * 30 * 30 / np.pi))
    cut = np.where(np.isin(labels, np.arange(7, 17)), labels, 0)
    t = cells_table(cut, rgb)
    assert reference_diameter(t, stained_score(rgb, cut, t["label"].to_numpy()))[1] == "all cells"
    assert reference_diameter(t.iloc[0:0]) == (None, "no cells")


def test_smear_sizes_and_crops_use_the_whole_red_cells():
    from napari_cytodiffusion.pipeline import analyze

    rgb, labels = _field_with_cut_and_stained_cells()
    res = analyze(rgb, labels=labels, speed="fast", seed=0)
    assert res.summary["reference_diameter"] == {
        "pixels": pytest.approx(np.sqrt(4 * 14 * 14 / np.pi), abs=0.01),
        "cells": "whole red cells",
        "whole_red_cells": 6,
    }
    from napari_cytodiffusion.layers import legend_html

    model = get_model("default")
    assert "scale: a red cell is 15.8 px across" in legend_html(
        res.summary, model.classes, model.metadata.colours
    )
    few = analyze(rgb, labels=np.where(np.isin(labels, [3, 4, 5, 6]), 0, labels), speed="fast", seed=0)
    assert "px, from whole cells (fewer than 3 whole red cells)" in legend_html(
        few.summary, model.classes, model.metadata.colours
    )
    t = res.table
    assert t["classified"].sum() == 3 and "stain_score" in t
    np.testing.assert_allclose(t["size"], t["equivalent_diameter"] / np.sqrt(4 * 14 * 14 / np.pi))


def test_a_given_red_cell_size_sets_the_scale_and_allows_the_size_check():
    """A user who knows a red cell's size in pixels gets crops and sizes at that scale, even on a field
    with too few cells to measure it (a crop around one cell)."""
    from napari_cytodiffusion.crops import crops_from_labels
    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.layers import legend_html
    from napari_cytodiffusion.pipeline import analyze

    rgb, labels = _field_with_cut_and_stained_cells()
    one = np.where(labels == 17, labels, 0)  # one violet cell: no red cell to measure
    estimated = analyze(rgb, labels=one, speed="fast", seed=0)
    assert estimated.summary["size_check"].startswith("not applied")
    given = analyze(rgb, labels=one, speed="fast", seed=0, red_cell_px=20.0)
    assert given.summary["reference_diameter"] == {"pixels": 20.0, "cells": "given", "whole_red_cells": 0}
    assert given.summary["size_check"] == "applied" and given.parameters["red_cell_px"] == 20.0
    assert given.table["size"].iloc[0] == pytest.approx(np.sqrt(4 * 30 * 30 / np.pi) / 20.0)
    model = get_model("default")
    assert "a red cell is 20.0 px across (given)" in legend_html(
        given.summary, model.classes, model.metadata.colours
    )
    # the crop the classifier saw is the one cut at that scale
    crop, _ = crops_from_labels(rgb, one, model.metadata.preprocessing, reference_diameter=20.0)
    other, _ = crops_from_labels(rgb, one, model.metadata.preprocessing, reference_diameter=40.0)
    assert not np.array_equal(crop, other)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(InputError, match="positive number of pixels"):
            analyze(rgb, labels=one, speed="fast", red_cell_px=bad)


def test_smear_finetuning_crops_cells_at_the_runs_scale():
    """Corrected cells become training crops at the scale the smear was classified at (a given one too)."""
    from napari_cytodiffusion.adapt.finetune import smear_finetune_data
    from napari_cytodiffusion.pipeline import analyze, reference_diameter, run_reference

    rgb, labels = _field_with_cut_and_stained_cells()
    res = analyze(rgb, labels=labels, speed="fast", seed=0, red_cell_px=25.0)
    table = res.table.copy()
    table["corrected_class"] = ""
    table.loc[table["classified"], "corrected_class"] = "lymphocyte"
    model = get_model("default")
    assert run_reference(res.summary, table) == 25.0  # the run's own scale, not the estimate
    assert run_reference({}, table) == reference_diameter(table)[0]
    at_run = smear_finetune_data(model, rgb, labels, table, reference=run_reference(res.summary, table))
    estimated = smear_finetune_data(model, rgb, labels, table)
    again = smear_finetune_data(model, rgb, labels, table, reference=reference_diameter(table)[0])
    assert at_run.train_images.shape == estimated.train_images.shape and len(at_run.train_labels) == 3
    assert not np.array_equal(at_run.train_images, estimated.train_images)
    assert np.array_equal(estimated.train_images, again.train_images)


#: PBC val images with single platelets beside their cell (two of each class)
PLATELET_FIELDS = [
    "basophil/BA_54664.jpg", "basophil/BA_680879.jpg", "eosinophil/EO_87220.jpg", "eosinophil/EO_801.jpg",
    "ig/PMY_875045.jpg", "ig/MY_380564.jpg", "lymphocyte/LY_64434.jpg", "lymphocyte/LY_877055.jpg",
    "monocyte/MO_294724.jpg", "monocyte/MO_385446.jpg", "neutrophil/SNE_840546.jpg", "neutrophil/SNE_245640.jpg",
]  # fmt: skip


def test_single_platelets_of_a_smear_score_against_their_own_reference(shared_data):
    """The shipped platelet references are PBC's platelet images (large platelets, clumps); the single
    platelets of a smear, too small for any other class, are scored against a reference of their own."""
    from napari_cytodiffusion.classify.classifier import calibration_for
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.pipeline import analyze

    model = get_model("default")
    anomaly = calibration_for(model)["anomaly"]
    (comp,) = [c for c in anomaly["profile"].get("components", []) if c["name"] == "smear platelets"]
    assert (
        model.classes[comp["class"]] == "platelet"
        and comp["max_size"]
        < min(lo for c, (lo, _) in class_ranges(model.metadata.extra).items() if c != "platelet") + 1e-9
    )
    shares = {}
    for size_check in (True, False):
        scores = []
        for name in PLATELET_FIELDS:
            t = analyze(
                read_image(shared_data / "pbc" / "images" / name), model=model, size_check=size_check
            ).table
            small = t["classified"] & (t["size"] <= comp["max_size"])
            if size_check:  # too small for any other class
                assert (t.loc[small, "class"] == "platelet").all()
            scores += t.loc[small, "anomaly"].tolist()
        assert len(scores) >= 15
        shares[size_check] = float(np.mean(np.asarray(scores) > anomaly["threshold"]))
    assert shares[True] <= 0.2, shares
    # without a trusted size (check off, or a single-cell image) they meet PBC's platelet images only,
    # or are called something else by appearance
    assert shares[False] >= 0.6, shares
