"""The stain-based look between the cells for platelets the network left out."""

import numpy as np
import pytest

from napari_cytodiffusion.segmentation.platelets import add_platelets

BACKGROUND = (0.85, 0.84, 0.86)
RED_CELL = (0.80, 0.55, 0.62)  # pink: red above blue
PLATELET = (0.60, 0.45, 0.78)  # violet: blue well above red


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _field():
    """A 240 px field: red cells 40 px across (labelled), and unlabelled blobs between them."""
    shape = (240, 240)
    img = np.empty((*shape, 3), np.float32)
    img[:] = BACKGROUND
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(40, 40), (40, 200), (200, 40), (200, 200), (120, 40)], start=1):
        disc = _disc(shape, cy, cx, 20)
        img[disc] = RED_CELL
        labels[disc] = i
    blobs = {
        "platelet": ((120, 120, 6), PLATELET),  # 12 px: 0.3 red-cell diameters
        "second platelet": ((60, 120, 7), PLATELET),
        "red fragment": ((180, 120, 7), RED_CELL),  # small but not violet
        "speck": ((120, 190, 2), PLATELET),  # violet but far too small (dust, noise)
        "violet clump": ((200, 120, 17), PLATELET),  # violet but a red cell's size: not a platelet
        "beside a cell": ((200, 69, 6), PLATELET),  # 3 px from the red cell at (200, 40)
        "on a cell's rim": ((120, 56, 6), PLATELET),  # mostly inside the red cell at (120, 40)
    }
    for (cy, cx, r), colour in blobs.values():
        img[_disc(shape, cy, cx, r) & (labels == 0)] = colour
    rng = np.random.default_rng(0)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0, 1), labels, {k: v[0] for k, v in blobs.items()}


def test_violet_blobs_of_platelet_size_between_the_cells_are_added():
    img, labels, blobs = _field()
    before = labels.copy()
    out, added = add_platelets(img, labels, diameter=40)
    assert np.array_equal(labels, before)  # the input is not modified
    assert out.dtype == np.uint32 and added == 3
    assert np.array_equal(out[before > 0], before[before > 0])  # found cells are untouched
    for name in ("platelet", "second platelet", "beside a cell"):
        cy, cx, r = blobs[name]
        lab = out[cy, cx]
        assert lab > before.max(), name  # a new cell, numbered after the existing ones
        area = (out == lab).sum()
        assert 0.7 * np.pi * r**2 < area < 1.6 * np.pi * r**2, name
    for name in ("red fragment", "speck", "violet clump"):
        cy, cx, _ = blobs[name]
        assert out[cy, cx] == 0, name
    cy, cx, r = blobs["on a cell's rim"]
    assert out[cy, cx + r - 1] == 0  # its sliver outside the cell is the cell's fringe, not a platelet


def test_sizes_follow_the_given_cell_diameter():
    img, labels, blobs = _field()
    # next to cells 120 px across the 12-14 px blobs are specks, and the 34 px clump is platelet-sized
    out, added = add_platelets(img, labels, diameter=120)
    assert added == 1
    assert out[blobs["violet clump"][:2]] > 0 and out[blobs["platelet"][:2]] == 0


@pytest.mark.parametrize("case", ["grayscale", "no background", "bad diameter"])
def test_nothing_to_measure_against_adds_nothing(case):
    img, labels, _ = _field()
    if case == "grayscale":
        img = np.repeat(img.mean(axis=-1, keepdims=True), 3, axis=-1)
    elif case == "no background":
        labels = np.ones_like(labels)
    out, added = add_platelets(img, labels, diameter=0 if case == "bad diameter" else 40)
    assert added == 0 and np.array_equal(out, labels)


@pytest.mark.parametrize(
    "stem",
    [
        "2540b0c8-a7d3-5dea-b6e2-70a048f4ef63",  # Kaggle field, 416 px
        "c787c74c-74f1-5c8f-81fc-fc9b30740b4d",  # BCCD field, 640x480
    ],
)
def test_platelets_the_network_missed_are_added_on_real_smears(shared_data, tmp_path, stem):
    """TXL-PBC val fields with a boxed platelet that the smear network alone does not outline."""
    from napari_cytodiffusion.cli.main import main
    from napari_cytodiffusion.evaluate.segmentation import read_yolo, score_boxes
    from napari_cytodiffusion.export import read_labels_tiff
    from test_large_cells import json_path

    image = shared_data / "txl_pbc" / "images" / "val" / f"{stem}.jpg"
    assert main(["segment", str(image), "--out", str(tmp_path / "on")]) == 0
    assert main(["segment", str(image), "--no-platelets", "--out", str(tmp_path / "off")]) == 0
    on, on_meta = read_labels_tiff(tmp_path / "on" / f"{stem}_labels.tif")
    off, off_meta = read_labels_tiff(tmp_path / "off" / f"{stem}_labels.tif")
    assert json_path(on_meta, "platelets") is True and json_path(off_meta, "platelets") is False
    assert np.array_equal(on[off > 0], off[off > 0])  # the network's cells are kept as they were
    assert on.max() == off.max() + 1  # one cell added
    classes, boxes = read_yolo(shared_data / "txl_pbc" / "labels" / "val" / f"{stem}.txt", *on.shape)
    found_off = score_boxes(classes, boxes, off)["per_class"]["2"]
    found_on = score_boxes(classes, boxes, on)["per_class"]["2"]
    assert found_on["tp"] == found_off["tp"] + 1 and found_on["fp"] == 0  # it is the missed platelet
