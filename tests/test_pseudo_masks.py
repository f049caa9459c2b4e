import numpy as np
from skimage.draw import disk
from skimage.measure import regionprops

from napari_cytodiffusion.evaluate.segmentation import score_masks
from napari_cytodiffusion.segmentation.pseudo_masks import masks_from_boxes


def _cells(shape, centres, radius):
    lab = np.zeros(shape, np.int32)
    for i, c in enumerate(centres, 1):
        rr, cc = disk(c, radius, shape=shape)
        lab[rr, cc] = i
    return lab


def test_ellipses_in_boxes_reproduce_round_cells_including_border_cut_ones():
    # one cell cut by the left edge, one by the bottom edge, two touching cells, one free cell
    truth = _cells((120, 160), [(60, 8), (112, 80), (30, 60), (30, 81), (80, 130)], 10.5)
    boxes = np.array([r.bbox for r in regionprops(truth)], float)
    pseudo = masks_from_boxes(truth.shape, boxes)
    s = score_masks(truth, pseudo)
    assert s["n_pred"] == s["n_true"] == 5 and s["tp75"] == 5
    assert min(s["dice"]) > 0.9
    # the cut cell meets the edge along the same chord as the true cell (the ellipse inscribed in
    # the cut box itself would only touch the edge)
    true_chord = (truth[:, 0] == truth[60, 2]).sum()
    assert abs((pseudo[:, 0] == pseudo[60, 2]).sum() - true_chord) <= 1


def test_overlapping_boxes_split_pixels_and_degenerate_boxes_are_skipped():
    boxes = np.array([[10, 10, 40, 40], [10, 30, 40, 60], [5, 5, 6, 50]], float)
    lab = masks_from_boxes((50, 70), boxes)
    assert set(np.unique(lab)) == {0, 1, 2}
    assert lab[25, 25] == 1 and lab[25, 45] == 2  # each centre keeps its own cell
    assert lab[25, 35] in (1, 2)  # overlap goes to the cell whose ellipse it lies deepest in
    assert masks_from_boxes((10, 10), np.zeros((0, 4))).max() == 0
