"""The coarse second pass that finds cells far larger than the rest."""

import numpy as np
import pytest

from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams, segment
from napari_cytodiffusion.segmentation.large_cells import add_large_cells


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_a_missed_big_cell_replaces_its_fragments_and_a_clump_changes_nothing():
    shape = (200, 200)
    fine = np.zeros(shape, np.int32)
    fine[_disc(shape, 50, 50, 8)] = 1  # fragment inside the big cell
    fine[_disc(shape, 150, 150, 10)] = 2  # a small cell, away from everything
    fine[_disc(shape, 150, 40, 12)] = 3  # two touching cells that the coarse pass merges
    fine[_disc(shape, 150, 64, 12)] = 4
    fine[_disc(shape, 50, 95, 9)] = 5  # neighbour poking into the big cell
    coarse = np.zeros(shape, np.int32)
    coarse[_disc(shape, 50, 50, 40)] = 7  # the big cell, mostly missed by the fine pass
    coarse[_disc(shape, 150, 40, 14) | _disc(shape, 150, 64, 14)] = 8  # the clump of cells 3 and 4
    coarse[_disc(shape, 150, 150, 9)] = 9  # small: ignored whatever covers it
    before = fine.copy()
    assert 2 * np.sqrt((coarse == 8).sum() / np.pi) > 30  # big enough to be considered
    out, added = add_large_cells(fine, coarse, min_diameter=30)
    assert np.array_equal(fine, before)  # the input is not modified
    assert added == 1 and out.dtype == np.uint32
    big = out[_disc(shape, 50, 50, 40)]
    assert 1 not in out  # the fragment gave way to the big cell
    new = int(out.max())
    assert new == 6 and (big == new).mean() > 0.95
    assert np.array_equal(out == 5, fine == 5)  # a neighbour mostly outside the big cell is kept
    for lab in (2, 3, 4):  # the small cell and the clump's cells are untouched
        assert np.array_equal(out == lab, fine == lab)


def test_nothing_big_returns_the_fine_labels():
    fine = np.zeros((50, 50), np.int32)
    fine[5:10, 5:10] = 1
    out, added = add_large_cells(fine, fine.copy(), min_diameter=20)
    assert added == 0 and np.array_equal(out, fine)
    with pytest.raises(ValueError, match="shape"):
        add_large_cells(fine, fine[:10], min_diameter=20)


@pytest.mark.parametrize("name, diameter", [("009", None), ("020", 38.0)])
def test_white_cell_far_larger_than_the_segmentation_scale_is_found_whole(shared_data, name, diameter):
    """segmentation_WBC dataset 2: a white cell 140 px across, alone (009: no red cells to measure,
    so the model's own 30 px) or among red cells half its size (020) segmented at 38 px, the scale of
    their fragments, which the automatic diameter took before it looked past fragments. Segmented at
    a fraction of its size, Cellpose misses the white cell or breaks it up; the second pass finds it
    whole. (At 020's automatic diameter, 74 px, the first pass finds it whole.)"""
    from skimage import io

    folder = shared_data / "segmentation_wbc" / "dataset_2"
    image = io.imread(folder / f"{name}.png")[..., :3]
    truth = io.imread(folder / f"{name}_mask.png")
    truth = (truth if truth.ndim == 2 else truth[..., 0]) > 0

    def dice(labels):
        ids, counts = np.unique(labels[truth], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if len(ids) == 0:
            return 0.0
        best = labels == ids[np.argmax(counts)]
        return 2 * (best & truth).sum() / (best.sum() + truth.sum())

    assert dice(segment(image, SegmentParams(large_cells=False, diameter=diameter))) < 0.3
    assert dice(segment(image, SegmentParams(diameter=diameter))) > 0.8
    if diameter is not None:
        assert dice(segment(image)) > 0.8


def test_cli_turns_the_second_pass_off_and_records_it(shared_data, tmp_path, capsys):
    from napari_cytodiffusion.cli.main import main
    from napari_cytodiffusion.export import read_labels_tiff

    image = shared_data / "segmentation_wbc" / "dataset_2" / "020.png"
    small = ["--diameter", "38"]  # the scale of its red cells' fragments: the white cell breaks up
    assert main(["segment", str(image), *small, "--out", str(tmp_path / "on")]) == 0
    assert main(["segment", str(image), *small, "--no-large-cells", "--out", str(tmp_path / "off")]) == 0
    on, on_meta = read_labels_tiff(tmp_path / "on" / "020_labels.tif")
    off, off_meta = read_labels_tiff(tmp_path / "off" / "020_labels.tif")
    assert json_path(on_meta, "large_cells") is True and json_path(off_meta, "large_cells") is False
    assert json_path(on_meta, "diameter_used_px") == 38 and json_path(on_meta, "diameter_from") == "given"
    assert "segmented for cells of 38 px, given" in capsys.readouterr().out
    # the white cell in the middle of the field is one cell only with the second pass
    centre = (on.shape[0] // 2, on.shape[1] // 2)
    assert on[centre] > 0 and (on == on[centre]).sum() > 0.7 * np.pi * 70**2  # 140 px across
    assert off[centre] == 0 or (off == off[centre]).sum() < 0.3 * (on == on[centre]).sum()


def json_path(meta, key):
    """A key anywhere in a nested audit trail."""
    if isinstance(meta, dict):
        if key in meta:
            return meta[key]
        for v in meta.values():
            found = json_path(v, key)
            if found is not None:
                return found
    return None
