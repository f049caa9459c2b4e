"""Choosing a classifier model in a widget: a bundled or cached model by name, or any folder."""

from __future__ import annotations

from magicgui.widgets import ComboBox, FileEdit, Label

from ..errors import ModelError

#: the name-list entry that shows the folder field
FOLDER_CHOICE = "folder…"


def model_names(_=None) -> list[str]:
    """Names of the models usable without a download (bundled first), then the folder entry."""
    from ..model.registry import available_models

    return [*available_models(), FOLDER_CHOICE]


def model_picker() -> tuple[ComboBox, FileEdit, Label]:
    """A model-name list, a folder field that shows only when the list says ``folder…``, and a
    line about the chosen model (:func:`~napari_cytodiffusion.model.card.model_summary`: what it
    learnt from and how well it measured), or why it cannot be used; hovering over the line shows
    the model's card (:func:`model_card_tooltip`).

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
    info = Label(label="about the model", value="")
    info.native.setWordWrap(True)

    def _describe() -> None:
        spec = model_spec(name, folder)
        info.value = model_description(spec)
        info.tooltip = model_card_tooltip(spec)

    def _name_changed(value: str) -> None:
        folder.visible = value == FOLDER_CHOICE
        _describe()

    def _folder_changed(value) -> None:
        if str(value or "") not in ("", ".") and name.value != FOLDER_CHOICE:
            name.value = FOLDER_CHOICE
        _describe()

    name.changed.connect(_name_changed)
    folder.changed.connect(_folder_changed)
    _describe()
    return name, folder, info


def model_description(spec: str | None) -> str:
    """The picker's line about a model: its summary, or why it cannot be used."""
    from ..model.card import model_summary

    if spec is None:
        return "choose a model folder"
    try:
        return model_summary(spec)
    except ModelError as exc:
        return f"cannot use this model: {exc}"


def model_card_tooltip(spec: str | None) -> str:
    """The model's card (:func:`~napari_cytodiffusion.model.scope.model_about`: what it is for, never
    learnt and was measured to miss) as rich text for a tooltip; empty when it cannot be read."""
    from html import escape

    from ..model.scope import model_about

    if spec is None:
        return ""
    try:
        items = model_about(spec)
    except ModelError:
        return ""
    return "<qt>" + "<br>".join(f"<b>{escape(h)}</b>: {escape(t)}" for h, t in items) + "</qt>"


def model_spec(name: ComboBox, folder: FileEdit) -> str | None:
    """What :func:`~napari_cytodiffusion.model.registry.get_model` takes for the picker's state."""
    if name.value != FOLDER_CHOICE:
        return str(name.value or "default")
    v = str(folder.value or "")
    return None if v in ("", ".") else v
