"""Labelling the cells of a classified smear: keys, corrections, new classes, take-back, recounting.

A mixin of :class:`~napari_cytodiffusion.widgets.classify.ClassifyWidget`: it works on the widget's
``result`` (the points layer's features carry a user's labels as ``corrected_class``) and on its
controls (*set selected to*, *or a new class*, the keys line); the counts, differential and alerts are
recounted by the library's :func:`~napari_cytodiffusion.pipeline.summarize`.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import InputError
from ._runner import n_cells, notify


class LabellingMixin:
    """Ctrl+1…9 / Ctrl+0 / Ctrl+Backspace, *Apply correction*, *Clear correction* and the recount."""

    def next_to_label(self) -> int | None:
        """Select and inspect the unlabelled cell whose label would help most (active learning)."""
        from ..adapt.active import labelling_queue

        if not self.result:
            notify("warning", "classify a smear first")
            return None
        pts = self.result["points"]
        queue = labelling_queue(pts.features)
        if queue.size == 0:
            notify("info", "every classified cell has a label")
            return None
        row = int(queue[0])
        pts.selected_data = {row}
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9 moved it to viewer.scene
        camera.center = tuple(np.asarray(pts.data[row]) * np.asarray(pts.scale) + pts.translate)
        self.inspect(row)
        self.inspector.queue_info.value = f"{queue.size} unlabelled cell(s) left; this one is the most useful"
        return row

    # labelling from the keyboard --------------------------------------------
    def _bind_label_keys(self) -> None:
        """Ctrl+1…9: label the selected cells as the list's 1st…9th class; Ctrl+0: next cell to label.

        Bound on the viewer (whichever layer is active); plain digits stay napari's layer modes.
        """
        for k in range(1, 10):
            self.bind_viewer_key(f"Control-{k}", lambda _v, i=k - 1: self.label_with_key(i))
        self.bind_viewer_key("Control-0", lambda _v: self.next_to_label())
        self.bind_viewer_key("Control-Backspace", lambda _v: self.undo_label())
        self._update_keys_line()
        self.model_name.changed.connect(self._update_keys_line)
        self.model_dir.changed.connect(self._update_keys_line)

    def _update_keys_line(self) -> None:
        classes = self._classes()[:9]
        self.keys_line.value = (
            "keys: "
            + " · ".join(f"Ctrl+{i} {c}" for i, c in enumerate(classes, 1))
            + " · Ctrl+0 next cell · Ctrl+Backspace take back"
            if classes
            else ""
        )

    def label_with_key(self, index: int) -> None:
        """Label the selected cells as class ``index`` of the list (what Ctrl+1…9 do); then, with
        *after a key, go to the next cell to label*, select and inspect the next cell of the queue."""
        if not self.result:
            notify("warning", "classify a smear first")
            return
        classes = self._classes()
        if index >= len(classes):
            notify("warning", f"there are {len(classes)} classes: Ctrl+{index + 1} labels nothing")
            return
        if not self.result["points"].selected_data:
            notify("warning", "select a cell first (Ctrl+0 selects the next cell to label)")
            return
        self.correct_to.value = classes[index]
        self.new_class.value = ""
        self.apply_correction()
        if self.key_next.value:
            self.next_to_label()

    def apply_correction(self) -> None:
        """Set the true class of the selected points (kept in features as ``corrected_class``)."""
        if not self.result:
            notify("warning", "classify a smear first")
            return
        sel = sorted(self.result["points"].selected_data)
        try:
            cls = self._new_class_name() or self.correct_to.value
        except InputError as exc:
            notify("error", str(exc))
            return
        if not sel or not cls:
            notify("warning", "select cells in the points layer and a class")
            return
        self._set_corrections(sel, cls)
        if self.new_class.value.strip():  # a class of the user's: now in the list and on a key
            self.new_class.value = ""
            self.correct_to.reset_choices()
            self.correct_to.value = cls
            self._update_keys_line()
        self.status.value = f"{len(sel)} cell(s) set to {cls}"

    def clear_correction(self) -> None:
        """Take the correction off the selected cells: the model's call stands, and they are unlabelled again."""
        if not self.result:
            notify("warning", "classify a smear first")
            return
        feats = self.result["points"].features
        sel = [i for i in sorted(self.result["points"].selected_data) if _corrected(feats, i)]
        if not sel:
            notify("warning", "select corrected cells in the points layer first")
            return
        self._set_corrections(sel, "")
        self.status.value = f"{len(sel)} correction(s) cleared"

    def undo_label(self) -> None:
        """Take back the last correction, clearing or key press (Ctrl+Backspace); its cells are selected again."""
        history = self.result.get("history") if self.result else None
        if not history:
            notify("info", "nothing to take back")
            return
        previous = history.pop()  # {cell label: its corrected_class before}
        pts = self.result["points"]
        rows = {int(lab): i for i, lab in enumerate(pts.features["label"])}
        here = {rows[lab]: cls for lab, cls in previous.items() if lab in rows}  # deleted cells are gone
        if not here:
            notify("info", "the cells of the last correction were removed from the result")
            return
        feats = pts.features.copy()
        for row, cls in here.items():
            feats.loc[row, "corrected_class"] = cls
        self._show_corrections(feats)
        pts.selected_data = set(here)
        if len(here) == 1:
            self.inspect(next(iter(here)))
        self.status.value = f"taken back: {len(here)} cell(s) as they were"

    def _set_corrections(self, rows: list[int], cls: str) -> None:
        """Give ``rows`` the corrected class ``cls`` ('' clears it), remembering the old values for undo."""
        feats = self.result["points"].features.copy()
        if "corrected_class" not in feats:
            feats["corrected_class"] = ""
        before = feats.loc[rows, "corrected_class"].fillna("").astype(str)
        self.result.setdefault("history", []).append(
            {int(lab): old for lab, old in zip(feats.loc[rows, "label"], before, strict=True)}
        )
        feats.loc[rows, "corrected_class"] = cls
        self._show_corrections(feats)

    def _show_corrections(self, feats) -> None:
        """Put corrected features on the points layer: colours, labels, counts, legend, class list, keys."""
        from ..layers import class_colours

        pts = self.result["points"]
        pts.features = feats
        md = self.result["model"].metadata
        pts.face_color = class_colours(feats, md.classes, md.colours)
        self._recolour()
        self._recount()
        self.correct_to.reset_choices()  # a class of the user's that no cell has any more leaves the list
        self._update_keys_line()

    def _new_class_name(self) -> str:
        """The class typed in *or a new class* ('' when empty), spelt as the model's if it is one."""
        name = " ".join(str(self.new_class.value or "").split())
        if not name:
            return ""
        known = {c.lower(): c for c in self._classes()}
        if name.lower() in known:
            return known[name.lower()]
        if len(name) > 40 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _+().-]*", name):
            raise InputError(
                f"{name!r} cannot be a class name: up to 40 letters, digits, spaces and _+().- "
                "(it names a folder of the exported training set)"
            )
        return name

    def _points_removed(self, points, event) -> None:
        """Cells whose points the user deleted leave the counts, the legend and the export at once."""
        if (
            str(getattr(event, "action", "")) != "removed"
            or not self.result
            or self.result["points"] is not points
        ):
            return
        n = len(getattr(event, "data_indices", ()) or ())
        self._inspected = None
        self._recolour()
        self._recount()
        self.status.value = f"{n_cells(n)} removed from the result: left out of the counts and the export"

    def _recount(self) -> dict:
        """Recount the summary (counts, differential, alerts) with the user's corrections; update the legend."""
        from ..classify.classifier import calibration_for
        from ..layers import legend_html
        from ..model.scope import class_notes
        from ..pipeline import summarize

        r = self.result
        model = r["model"]
        table = r["points"].features.drop(columns=["uncertainty"], errors="ignore")
        r["summary"] = {
            **r["summary"],
            **summarize(
                table,
                model.classes,
                r["summary"]["triage_thresholds"],
                calibration_for(model, r["params"].get("speed", "balanced")).get("anomaly"),
                model.metadata.extra,
            ),
        }
        md = model.metadata
        self.legend.value = legend_html(r["summary"], md.classes, md.colours, class_notes(md))
        return r["summary"]


def _corrected(features, row: int) -> bool:
    """Whether the cell on ``row`` has a correction."""
    if "corrected_class" not in features:
        return False
    value = features["corrected_class"].iloc[row]
    return isinstance(value, str) and value != ""
