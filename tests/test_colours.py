"""Class colours: distinct for colour-blind readers too, never shared between classes."""

import pytest

from napari_cytodiffusion.colours import (
    KNOWN_CLASS_COLOURS,
    USER_CLASS_COLOURS,
    VISIONS,
    default_colours,
    smallest_difference,
    user_class_colour,
)
from napari_cytodiffusion.model.folder import read_metadata
from napari_cytodiffusion.model.registry import bundled_models


@pytest.mark.parametrize("vision", VISIONS)
def test_every_class_colour_stands_apart_for_every_reader(vision):
    """Simulated protanopia, deuteranopia, tritanopia (Machado 2009): every pair >= 10 CIEDE2000.

    The colours the PBC classes had before (ColorBrewer Paired) fail: eosinophil and monocyte are
    1.2 apart to a protanope.
    """
    for folder in bundled_models().values():
        colours = read_metadata(folder).colours
        assert smallest_difference([*colours, *USER_CLASS_COLOURS], vision)[0] >= 10
    paired = ["#6a3d9a", "#ff7f00", "#e31a1c", "#b15928", "#1f78b4", "#33a02c", "#fb9a99", "#a6cee3"]
    if vision == "protanopia":
        assert smallest_difference(paired, vision)[0] < 2


def test_shipped_models_use_the_known_class_colours():
    for folder in bundled_models().values():
        md = read_metadata(folder)
        assert md.colours == [KNOWN_CLASS_COLOURS[c] for c in md.classes]


def test_new_classes_take_colours_nobody_has():
    names = ["band", "neutrophil", "smudge", "blast"]
    colours = default_colours(names)
    assert colours[1] == KNOWN_CLASS_COLOURS["neutrophil"] and len(set(colours)) == 4
    base = default_colours(list(KNOWN_CLASS_COLOURS))
    added = default_colours(["band", "smudge"], taken=base)  # classes added to a model (fine-tuning)
    assert not set(added) & set(base) and len(set(added)) == 2
    many = default_colours([f"class {i}" for i in range(20)])  # beyond the palette: repeats, no error
    assert len(many) == 20 and len(set(many[:16])) == 16
    # a class added in napari never takes a colour of the model's classes
    model = [USER_CLASS_COLOURS[0], USER_CLASS_COLOURS[1]]
    assert user_class_colour(0, model) == USER_CLASS_COLOURS[2]
    assert user_class_colour(0) == USER_CLASS_COLOURS[0]
