"""Property tests (hypothesis) on the core functions."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_cytodiffusion.crops import crop_single_cell, crops_from_labels
from napari_cytodiffusion.evaluate.metrics import auroc
from napari_cytodiffusion.io.images import to_rgb_float
from napari_cytodiffusion.model.folder import default_preprocessing
from napari_cytodiffusion.segmentation.table import cells_table

shapes = st.tuples(st.integers(8, 40), st.integers(8, 40)).flatmap(
    lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4)])
)
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_to_rgb_float_always_gives_rgb01(data):
    shape, dtype = data.draw(shapes), data.draw(dtypes)
    is_float = np.dtype(dtype).kind == "f"
    elements = st.floats(-1e6, 1e6, width=32) if is_float else None
    arr = data.draw(arrays(dtype, shape, elements=elements))
    if is_float and data.draw(st.booleans()):
        arr.flat[0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    out = to_rgb_float(arr)
    assert out.shape == (*shape[:2], 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(8, 48), st.integers(8, 48)), elements=st.integers(0, 5)))
def test_cells_table_accounts_for_every_pixel(labels):
    table = cells_table(labels)
    ids = np.unique(labels[labels > 0])
    assert list(table["label"]) == list(ids)
    assert table["area"].sum() == (labels > 0).sum()
    pre = default_preprocessing(16)
    crops, lab = crops_from_labels(np.zeros((*labels.shape, 3), np.uint8), labels, pre)
    assert crops.shape == (len(ids), 16, 16, 3) and list(lab) == list(ids)


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 200), st.integers(8, 200), st.floats(0.2, 1.0))
def test_single_cell_crop_any_size(h, w, frac):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    assert crop_single_cell(img, 32, frac).shape == (32, 32, 3)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 30), elements=st.floats(-5, 5)),
    arrays(np.float64, st.integers(1, 30), elements=st.floats(-5, 5)),
)
def test_auroc_is_antisymmetric(a, b):
    assert abs(auroc(a, b) + auroc(b, a) - 1) < 1e-9


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(8, 80), st.integers(8, 80)), max_size=5), st.sampled_from([None, 12.0]))
def test_single_cell_crops_from_a_generator_are_those_of_a_list(sizes, red_cell_px):
    """``classify`` reads its images one at a time (a generator): the crops are the same as from a list."""
    import pytest

    from napari_cytodiffusion.crops import single_cell_crops

    rng = np.random.default_rng(len(sizes))
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    pre = default_preprocessing(16)
    names = [f"cell{i}.png" for i in range(len(images))]
    listed = single_cell_crops(images, pre, red_cell_px, names)
    streamed = single_cell_crops((im for im in images), pre, red_cell_px, names)
    assert listed.shape == (len(images), 16, 16, 3) and np.array_equal(listed, streamed)
    with pytest.raises(ValueError, match="names"):
        single_cell_crops(iter(images), pre, red_cell_px, [*names, "extra.png"])
    if images:
        with pytest.raises(ValueError, match="names"):
            single_cell_crops(iter(images), pre, red_cell_px, names[:-1])
