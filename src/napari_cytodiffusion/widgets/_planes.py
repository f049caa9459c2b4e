"""The 2D image a widget works on: full resolution, the plane the viewer shows, read lazily."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

#: the most pixels a widget reads at full resolution (labels of 20,000 × 20,000 take 1.6 GB)
MAX_PIXELS = 20_000 * 20_000


def shown_plane(layer, viewer) -> np.ndarray:
    """The full-resolution 2D (or RGB) plane of an image or labels layer that the viewer shows.

    A multiscale layer gives its finest level (cells are a few pixels wide at the coarser ones);
    a stack gives the plane at the viewer's current position. Only that plane is read, so a lazy
    (dask, zarr) stack is never loaded whole.

    Raises
    ------
    InputError
        When the plane has more than :data:`MAX_PIXELS` pixels.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    index = shown_index(layer, viewer)
    if index:
        data = data[index]
    h, w = (int(n) for n in data.shape[:2])
    if h * w > MAX_PIXELS:
        raise InputError(
            f"{layer.name} is {h} × {w} pixels at full resolution, more than this widget reads at once "
            f"({MAX_PIXELS:,} pixels): crop a region of it first, or use `napari-cytodiffusion analyze` on tiles"
        )
    return np.asarray(data)


def shown_index(layer, viewer) -> tuple[int, ...]:
    """Index of the plane the viewer shows in ``layer``'s leading (non-image) axes; ``()`` for 2D."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = bool(getattr(layer, "rgb", False))
    extra = len(data.shape) - (3 if rgb else 2)
    if extra <= 0:
        return ()
    position = layer.world_to_data(viewer.dims.point[-layer.ndim :])
    return tuple(
        int(np.clip(round(float(p)), 0, n - 1))
        for p, n in zip(position[:extra], data.shape[:extra], strict=True)
    )


def plane_words(index: tuple[int, ...] | list[int]) -> str:
    """``(2,)`` → ``"plane 2"``; ``(1, 4)`` → ``"plane 1, 4"``."""
    return "plane " + ", ".join(str(int(i)) for i in index)


def labels_provenance(image_layer, labels_layer, viewer) -> str | None:
    """Check that ``labels_layer`` outlines what the viewer shows of ``image_layer``.

    *Segment cells* records the image it segmented and, for a stack, the plane
    (``metadata["napari-cytodiffusion"]``). A 2D labels layer is drawn over every plane, so labels
    of another plane of this stack are refused (:class:`InputError`): that plane's cells would be
    classified inside their outlines. Labels segmented on another image layer are allowed (the same
    field under another stain, say), but returned as a warning to show; ``None`` otherwise.
    """
    about = (labels_layer.metadata or {}).get("napari-cytodiffusion", {})
    source, plane = about.get("source"), about.get("plane")
    if not source:
        return None
    if source != image_layer.name:
        return f"'{labels_layer.name}' was segmented on '{source}', not on '{image_layer.name}'"
    shown = shown_index(image_layer, viewer)
    if plane is not None and shown and list(shown) != [int(i) for i in plane]:
        raise InputError(
            f"'{labels_layer.name}' outlines {plane_words(plane)} of '{image_layer.name}', but the viewer "
            f"shows {plane_words(shown)}: go back to that plane, or segment this one"
        )
    return None
