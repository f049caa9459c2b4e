"""Choosing a classifier model in a widget: a bundled or cached model by name, or any folder."""

from __future__ import annotations

from magicgui.widgets import ComboBox, FileEdit

#: the name-list entry that shows the folder field
FOLDER_CHOICE = "folder…"


def model_names(_=None) -> list[str]:
    """Names of the models usable without a download (bundled first), then the folder entry."""
    from ..model.registry import available_models

    return [*available_models(), FOLDER_CHOICE]


def model_picker() -> tuple[ComboBox, FileEdit]:
    """A model-name list and a folder field that shows only when the list says ``folder…``.

    Typing or browsing a folder switches the list to ``folder…``, so a folder set from Python
    (``widget.model_dir.value = path``) is used as well. Widgets that remember the choice list
    the folder before the name in ``persisted``, so the restored name has the last word.
    """
    name = ComboBox(
        label="model",
        choices=model_names,
        value="default",
        tooltip="default: the bundled PBC model; other names are bundled or in the model cache",
    )
    folder = FileEdit(label="model folder", mode="d", value="")
    folder.visible = False

    def _name_changed(value: str) -> None:
        folder.visible = value == FOLDER_CHOICE

    def _folder_changed(value) -> None:
        if str(value or "") not in ("", ".") and name.value != FOLDER_CHOICE:
            name.value = FOLDER_CHOICE

    name.changed.connect(_name_changed)
    folder.changed.connect(_folder_changed)
    return name, folder


def model_spec(name: ComboBox, folder: FileEdit) -> str | None:
    """What :func:`~napari_cytodiffusion.model.registry.get_model` takes for the picker's state."""
    if name.value != FOLDER_CHOICE:
        return str(name.value or "default")
    v = str(folder.value or "")
    return None if v in ("", ".") else v
