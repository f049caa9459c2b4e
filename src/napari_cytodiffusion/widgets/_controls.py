"""Controls that several widgets share, built in one place so they read and behave alike."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox


def speed_choice() -> ComboBox:
    """The classifier preset (``--speed``)."""
    return ComboBox(
        label="speed",
        choices=["fast", "balanced", "accurate", "full"],
        value="balanced",
        tooltip="fast: fewer UNet calls; balanced: the default; accurate: adds a rotated view; "
        "full: every class at every timestep",
    )


def cells_choice() -> ComboBox:
    """Which cells of a smear are classified (``--cells``)."""
    return ComboBox(
        label="cells",
        choices=["stained", "all"],
        value="stained",
        tooltip="stained: nucleated cells and platelets; all: every labelled cell",
    )


def size_check_box() -> CheckBox:
    """The size prior on a smear (``--no-size-check`` unticks it)."""
    return CheckBox(
        text="size check",
        value=True,
        tooltip="call each cell the best class its size allows (a platelet-sized blob is no "
        "erythroblast); cells whose appearance and size disagree are flagged",
    )


def red_cell_px_box() -> FloatSpinBox:
    """A red cell's diameter in pixels, 0 = measured (``--red-cell-px``)."""
    return FloatSpinBox(
        label="red cell (px, 0 = auto)",
        value=0.0,
        min=0.0,
        max=10_000.0,
        step=0.5,
        tooltip="a red cell's diameter in pixels, if you know it (about 7.5 µm / your camera's µm per "
        "pixel); sets the scale of every crop and size instead of measuring the field's red cells",
    )


def segmentation_model_choice(label: str = "model") -> ComboBox:
    """The Cellpose network (``--seg-model``)."""
    return ComboBox(
        label=label,
        choices=["smear", "cyto3", "cyto2", "nuclei"],
        value="smear",
        tooltip="'smear' is bundled and works offline; Cellpose built-ins download on first use",
    )


def border_pad_box() -> FloatSpinBox:
    """The border mirror, in cell diameters (``--border-pad``)."""
    return FloatSpinBox(
        label="border mirror (diameters)",
        value=0.05,  # SegmentParams.border_pad
        min=0.0,
        max=4.0,
        step=0.05,
        tooltip="mirror the image this many cell diameters beyond its edges before segmenting, so "
        "cells cut by the border are outlined like whole ones (0 = off; 0.15 outlines more of "
        "them, as box-annotated inventories count them)",
    )


def gpu_box() -> CheckBox:
    """Cellpose on a CUDA GPU (``--gpu``); the classifier uses one whenever there is one."""
    return CheckBox(
        text="segment on a GPU when there is one",
        value=False,
        tooltip="run Cellpose on a CUDA GPU (on the CPU when torch sees none); the classifier uses a CUDA GPU "
        "whenever there is one",
    )


def platelets_box() -> CheckBox:
    """The stain-based platelet pass (``--no-platelets`` unticks it)."""
    return CheckBox(
        text="look for platelets",
        value=True,
        tooltip="adds the small violet blobs between the cells that the network left out "
        "(platelets) as cells of their own",
    )
