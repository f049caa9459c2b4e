import numpy as np

from napari_cytodiffusion.segmentation.smoothing import smooth_enlarged_masks


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_enlarged_staircase_outlines_are_smoothed_back_towards_the_cells():
    """Two touching discs segmented at a quarter of the resolution and enlarged by nearest neighbour
    (what Cellpose returns for cells over twice its scale): smoothing brings each outline closer to
    its disc, keeps the labels, and leaves no pixel of one cell to the other."""
    shape, scale = (160, 240), 4
    truth = np.zeros(shape, np.uint32)
    truth[_disc(shape, 80, 80, 40)] = 1
    truth[_disc(shape, 80, 158, 38) & (truth == 0)] = 2
    coarse = truth[scale // 2 :: scale, scale // 2 :: scale]
    blocky = np.kron(coarse, np.ones((scale, scale), np.uint32))[: shape[0], : shape[1]]
    smooth = smooth_enlarged_masks(blocky, scale)
    assert smooth.dtype == blocky.dtype and set(np.unique(smooth)) == {0, 1, 2}

    def iou(a, lab):
        return ((a == lab) & (truth == lab)).sum() / ((a == lab) | (truth == lab)).sum()

    for lab in (1, 2):
        # fewer pixels disagree with the disc (the rest is where the coarse grid sampled it)
        assert 1 - iou(smooth, lab) < 0.85 * (1 - iou(blocky, lab))


def test_small_enlargements_and_slivers_are_left_alone():
    labels = np.zeros((40, 40), np.uint32)
    labels[10:30, 10:30] = 1
    labels[2, 5:35] = 2  # one pixel thick: would vanish in the blur
    assert smooth_enlarged_masks(labels, 1.2) is labels
    out = smooth_enlarged_masks(labels, 3.0)
    assert (out == 2).sum() > 0 and (out == 1).sum() > 0.8 * 400
    assert smooth_enlarged_masks(np.zeros((8, 8), np.uint32), 3.0).max() == 0
