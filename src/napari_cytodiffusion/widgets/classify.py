"""*Classify cells*: image + labels → classes, certainty, anomaly; layers, legend, inspector, export.

Labelling the cells (keys, corrections, new classes) is :mod:`.labelling`'s mixin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)

from ..errors import InputError, ModelError
from ..model.card import model_classes
from ._controls import cells_choice, red_cell_px_box, size_check_box, speed_choice
from ._model import model_picker, model_spec
from ._planes import labels_provenance, shown_plane
from ._runner import RunnerMixin, ScrollableDock, append_panel, n_cells, notify, unique_layer_name
from .labelling import LabellingMixin

COLOUR_MODES = ("class", "uncertainty", "anomaly")
_ONE_KEY = "1 does not delete cells in a result's layer: Ctrl+1…9 label them, Delete removes points"


class ClassifyWidget(ScrollableDock, Container, RunnerMixin, LabellingMixin):
    title = "Classify cells"
    settings_key = "classify"
    persisted = (
        "model_dir",
        "model_name",
        "speed",
        "cells",
        "min_area",
        "size_check",
        "red_cell_px",
        "max_flagged",
        "export_open",
        "key_next",
    )

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True, scrollable=True)  # taller than a laptop's screen
        self._init_scroll()
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=lambda _: self._layers("Image"))
        self.labels_layer = ComboBox(label="labels", choices=lambda _: self._layers("Labels"))
        self.model_name, self.model_dir, self.model_info = model_picker()
        self.speed = speed_choice()
        self.cells = cells_choice()
        self.only_selected = CheckBox(
            text="only selected cells",
            value=False,
            tooltip="cells selected in the last result's points layer, else the label selected in the labels layer",
        )
        self.min_area = SpinBox(label="min area (px)", value=0, min=0, max=10**7)
        self.size_check = size_check_box()
        self.red_cell_px = red_cell_px_box()
        self.max_flagged = FloatSpinBox(label="review if flagged >", value=0.10, min=0.0, max=1.0, step=0.01)
        self.extend(
            [
                self.image,
                self.labels_layer,
                self.model_name,
                self.model_dir,
                self.model_info,
                self.speed,
                self.cells,
                self.min_area,
                self.size_check,
                self.red_cell_px,
                self.only_selected,
                self.max_flagged,
            ]
        )
        self._init_runner("Classify")
        self.colour_by = ComboBox(label="colour labels by", choices=list(COLOUR_MODES), value="class")
        self.legend = Label(value="")
        self.legend.native.setWordWrap(True)  # long reasons wrap in the dock instead of widening it
        self.correct_to = ComboBox(label="set selected to", choices=lambda _: self._classes())
        self.new_class = LineEdit(
            label="or a new class",
            value="",
            tooltip="a class the model does not have (band, smudge, blast, ...): Apply correction gives it to "
            "the selected cells; it joins the list, the keys and the export, and fine-tuning adds it",
        )
        self.correct_button = PushButton(text="Apply correction")
        self.clear_button = PushButton(
            text="Clear correction",
            tooltip="the selected cells go back to the model's call, unlabelled (Ctrl+Backspace takes back "
            "the last correction)",
        )
        self.key_next = CheckBox(
            text="after a key, go to the next cell to label",
            value=True,
            tooltip="Ctrl+1…9 labels the selected cells, then selects the next cell most useful to label",
        )
        self.keys_line = Label(value="")
        self.keys_line.native.setWordWrap(True)  # one long line would widen the dock
        self.export_dir = FileEdit(label="export folder", mode="d", value="")
        self.export_button = PushButton(text="Export results")
        self.export_open = CheckBox(text="open the review page", value=False)
        self.extend(
            [
                self.colour_by,
                self.legend,
                self.correct_to,
                self.new_class,
                Container(
                    widgets=[self.correct_button, self.clear_button], layout="horizontal", labels=False
                ),
                self.keys_line,
                self.key_next,
                self.export_dir,
                self.export_open,
                self.export_button,
            ]
        )
        self.saved_file = FileEdit(
            label="saved result",
            mode="r",
            filter="*_summary.json *_cells.csv *_labels.tif summary.json",
            value="",
            tooltip="NAME_summary.json (or its cells CSV / labels TIFF) written by analyze, classify "
            "--labels, demo or Export results: reopened with its image for review and correction",
        )
        self.saved_image = FileEdit(
            label="its image (if moved)",
            mode="r",
            value="",
            tooltip="where the analysed image is now, when it is no longer where the result's audit says",
        )
        self.open_button = PushButton(text="Open saved result")
        self.extend([self.saved_file, self.saved_image, self.open_button])
        self.open_button.changed.connect(
            lambda: self.open_saved(self.saved_file.value, str(self.saved_image.value or "").strip() or None)
        )
        from .finetune import FinetunePanel
        from .inspector import CellInspector

        self.inspector = CellInspector()
        append_panel(self, self.inspector, "Cell inspector")
        self.inspector.target.changed.connect(lambda: self.inspect(self._inspected))
        self.inspector.next_button.changed.connect(self.next_to_label)
        self.inspector.sdedit_button.changed.connect(self.counterfactual)
        self.finetune = FinetunePanel(lambda: self.result, self._show)
        append_panel(self, self.finetune, "Adapt the model to your cells")
        self._inspected = None
        self.colour_by.changed.connect(self._recolour)
        self.correct_button.changed.connect(self.apply_correction)
        self.clear_button.changed.connect(self.clear_correction)
        self.export_button.changed.connect(lambda: self.export(self.export_dir.value))
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self.hook(ev, lambda e: (self.image.reset_choices(), self.labels_layer.reset_choices()))
        self.load_settings()
        for w in (self.model_name, self.model_dir):
            w.changed.connect(lambda: self.correct_to.reset_choices())
        self._bind_label_keys()
        self.result = None  # dict: table, summary, model, image layer, labels layer, points layer, params
        self.exported: dict[str, Path] = {}  # the files of the last export

    def release_viewer(self) -> None:
        """Also cancel a running fine-tune when the panel is closed."""
        super().release_viewer()
        self.finetune.release_viewer()

    def _layers(self, kind: str):
        import napari.layers

        cls = getattr(napari.layers, kind)
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)]

    def _classes(self):
        """The model's classes, then the classes the user has added (for the list and the keys)."""
        from ..layers import user_classes

        result = self.__dict__.get("result")
        if result:
            classes = list(result["model"].classes)
            return classes + user_classes(result["points"].features, classes)
        try:  # from the metadata: no weights are read on the GUI thread
            return model_classes(model_spec(self.model_name, self.model_dir))
        except ModelError:  # not a model folder (yet): no choices until it is fixed
            return []

    def _work(self):
        from ..model.registry import get_model
        from ..pipeline import DEFAULT_TRIAGE, Stage, iter_analyze

        image_layer, labels_layer = self.image.value, self.labels_layer.value
        if image_layer is None or labels_layer is None:
            raise InputError("choose an image and its labels (run Segment cells first, or paint labels)")
        image = shown_plane(image_layer, self.viewer)  # full resolution; a stack's current plane
        labels = shown_plane(labels_layer, self.viewer)
        warning = labels_provenance(image_layer, labels_layer, self.viewer)  # another plane: refused
        if warning:
            notify("warning", warning)
        if labels.shape != image.shape[: labels.ndim] or labels.ndim != 2:
            raise InputError(f"labels {labels.shape} must be 2D and match the image {image.shape[:2]}")
        spec = model_spec(self.model_name, self.model_dir)
        if spec is None:
            raise InputError("choose a model folder")
        opts = {
            "speed": self.speed.value,
            "cells": self.cells.value,
            "min_area": self.min_area.value,
            "size_check": bool(self.size_check.value),
            "red_cell_px": float(self.red_cell_px.value) or None,
        }
        if self.only_selected.value:
            opts["only_labels"] = self.selected_labels(labels_layer)
        triage = {**DEFAULT_TRIAGE, "max_flagged_fraction": float(self.max_flagged.value)}

        def gen():
            yield (0, 1, "loading the model")
            # in the worker: a first load (or a download) takes seconds
            model = get_model(spec, device="auto")
            out = None
            for item in iter_analyze(
                image, model=model, labels=labels.copy(), triage=triage, should_stop=self.should_stop, **opts
            ):
                if isinstance(item, Stage):
                    yield (item.done, item.total, item.stage)
                else:
                    out = item
            return out, model

        def done(result):
            res, model = result
            self._show(res, model, image_layer, labels_layer, image)

        return gen, done

    # results ---------------------------------------------------------------
    def _show(
        self,
        res,
        model,
        image_layer,
        labels_layer,
        image,
        corrections: dict | None = None,
        image_path: str | Path | None = None,
    ) -> None:
        """Add a points layer for a result; ``corrections`` ({label: class}) carry a user's labels over.

        ``image_path``: the image's file (default: the file the image layer was opened from), so an
        export records it and its review page can show the cells.
        """
        from ..layers import legend_html, points_layer_kwargs
        from ..model.scope import class_notes

        table = res.table
        md = model.metadata
        in_viewer = labels_layer in self.viewer.layers
        if not in_viewer:  # the source layer was deleted meanwhile: bring the labels back as a new layer
            labels_layer = self.viewer.add_labels(
                res.labels, name=unique_layer_name(self.viewer, f"{labels_layer.name} (restored)")
            )
            notify(
                "warning",
                "the labels layer was removed during classification; results were added to a restored copy",
            )
        if corrections:
            table = table.copy()
            table["corrected_class"] = table["label"].map(corrections).fillna("")
        coords, kwargs = points_layer_kwargs(table, md.classes, md.colours)
        points = self.viewer.add_points(
            coords,
            **kwargs,
            name=unique_layer_name(self.viewer, f"{image_layer.name} cells"),
            scale=labels_layer.scale,
            translate=labels_layer.translate,
            metadata={"napari-cytodiffusion": {"model": model.short_id(), "parameters": res.parameters}},
        )
        # napari's "1" deletes the selected points: beside Ctrl+1…9 that loses a cell to a slip of the finger
        points.bind_key("1", lambda _layer: notify("info", _ONE_KEY), overwrite=True)
        self.hook(points.events.data, lambda event: self._points_removed(points, event))
        self.result = {
            "table": table,
            "summary": res.summary,
            "model": model,
            "image_layer": image_layer,
            "labels_layer": labels_layer,
            "points": points,
            "params": res.parameters,
            "image": image,
            "labels": res.labels,
            "image_path": image_path or _file_of_plane(image_layer),
        }
        self._recolour()
        self.correct_to.reset_choices()
        self._update_keys_line()
        self.inspector.target.choices = md.classes
        self.hook(points.selected_data.events.items_changed, self._on_select)
        self.legend.value = legend_html(res.summary, md.classes, md.colours, class_notes(md))
        self.status.value = f"{n_cells(res.summary['n_classified'])} classified — {res.summary['verdict']}"
        domain = res.summary.get("domain_check") or {}
        if domain.get("shifted"):  # the one finding that changes how far every call can be trusted
            from ..classify.anomaly import shift_warning

            notify("warning", shift_warning(domain))

    def open_saved(self, path, image_path=None) -> None:
        """Reopen a saved smear result (any of its three files) with its image, for review.

        The files are read and the model loaded in a worker; the image, its labels and the cells
        come back as new layers (never replacing the user's), with the legend, inspector,
        correction and export of a fresh run. ``image_path``: where the image is now, if moved.
        """
        from napari.qt.threading import create_worker

        from ..io.results import read_smear_outputs, saved_image, saved_image_path, saved_model

        if not str(path or "").strip() or Path(str(path)).is_dir():
            notify("warning", "choose a saved result (NAME_summary.json from analyze or Export results)")
            return
        if image_path is not None and (str(image_path) in ("", ".") or Path(str(image_path)).is_dir()):
            image_path = None  # an empty file field
        fallback = model_spec(self.model_name, self.model_dir)

        def work():
            saved = read_smear_outputs(path)
            image, image_warning = saved_image(saved, image_path)
            model, model_warning = saved_model(saved, fallback)
            warnings = [w for w in (image_warning, model_warning) if w]
            return saved, image, saved_image_path(saved, image_path), model, warnings

        def done(out):
            saved, image, path_now, model, warnings = out
            rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
            image_layer = self.viewer.add_image(
                image, name=unique_layer_name(self.viewer, saved.stem), rgb=rgb
            )
            labels_layer = self.viewer.add_labels(
                saved.result.labels,
                name=unique_layer_name(self.viewer, f"{saved.stem} labels"),
                metadata={"napari-cytodiffusion": {"opened_from": str(path)}},
            )
            self._show(saved.result, model, image_layer, labels_layer, image, image_path=path_now)
            for w in warnings:
                notify("warning", w)
            self.status.value = f"opened {Path(str(path)).name}: " + self.status.value
            if str(self.export_dir.value or "").strip() in ("", "."):  # corrections go back beside the result
                self.export_dir.value = str(Path(str(path)).resolve().parent)

        self._open_worker = create_worker(
            work, _start_thread=False, _connect={"returned": done, "errored": self._on_error}
        )
        self._open_worker.start()

    def selected_labels(self, labels_layer) -> list[int]:
        """Label ids the user selected: points of the last result, else the labels layer's selected label."""
        r = self.__dict__.get("result")
        if r and r["labels_layer"] is labels_layer and r["points"].selected_data:
            feats = r["points"].features
            return [int(feats["label"].iloc[i]) for i in sorted(r["points"].selected_data)]
        if labels_layer.selected_label > 0:
            return [int(labels_layer.selected_label)]
        raise InputError("select cells first (points of a previous result, or a label in the labels layer)")

    def counterfactual(self) -> None:
        """SDEdit the inspected cell into the inspector's target class, and into its own class from the
        same noise; adds [original | redrawn as its class | redrawn as the target | what the class changed]."""
        from napari.qt.threading import create_worker

        from ..classify.counterfactual import redraw_panel
        from ..generate.sampling import sdedit

        if not self.result or self._inspected is None or not self.inspector.target.value:
            notify("warning", "select one cell and a target class in the inspector first")
            return
        r = self.result
        row = r["points"].features.iloc[self._inspected]
        model = r["model"]
        crop = self._crop(row)
        target = self.inspector.target.value
        tgt, strength = model.class_index(target), float(self.inspector.strength.value)
        src = model.class_index(row["class"])
        name = unique_layer_name(self.viewer, f"cell {int(row['label'])} as {target}")

        def work():  # the control: the cell redrawn as its own class from the same noise
            as_target = sdedit(model, crop[None], tgt, strength=strength, seed=0)[0]
            as_source = (
                as_target if src == tgt else sdedit(model, crop[None], src, strength=strength, seed=0)[0]
            )
            return redraw_panel(crop, as_source, as_target)

        def done(panel):
            self.viewer.add_image(
                panel,
                name=name,
                rgb=True,
                metadata={
                    "napari-cytodiffusion": {
                        "counterfactual": {"label": int(row["label"]), "from": row["class"], "to": target,
                                           "strength": strength, "seed": 0, "model": model.short_id()},
                        "panels": ["original", f"redrawn as {row['class']}", f"redrawn as {target}",
                                   "what the class changed"],
                    }
                },
            )  # fmt: skip

        worker = create_worker(
            work, _start_thread=False, _connect={"returned": done, "errored": self._on_error}
        )
        self.inspector._sdedit_worker = worker
        worker.start()

    def _crop(self, row) -> np.ndarray:
        from ..pipeline import run_crops

        r = self.result
        table = r["points"].features
        pre = r["model"].metadata.preprocessing
        return run_crops(r["image"], r["labels"], pre, r["summary"], table, table.loc[[row.name]])[0]

    def _on_select(self, event=None) -> None:
        sel = sorted(self.result["points"].selected_data) if self.result else []
        if len(sel) == 1:
            self.inspect(sel[0])

    def inspect(self, index: int | None) -> None:
        """Show cell ``index`` (row of the points layer) in the inspector; the heat map runs in a worker."""
        if index is None or not self.result:
            return
        from napari.qt.threading import create_worker

        from ..classify.counterfactual import counterfactual_map

        self._inspected = index
        r = self.result
        row = r["points"].features.iloc[index]
        model = r["model"]
        crop = self._crop(row)
        from ..classify.classifier import calibration_for, flag_limits

        limits = flag_limits(calibration_for(model, r["params"].get("speed", "balanced")))
        self.inspector.show(row, crop, model, None, limits)
        target = self.inspector.target.value
        if not target or row["class"] not in model.classes:
            return
        src, tgt = model.class_index(row["class"]), model.class_index(target)

        def work():
            return counterfactual_map(model, crop, target=tgt, source=src)

        worker = create_worker(
            work,
            _start_thread=False,
            _connect={
                "returned": lambda heat: self.inspector.show(row, crop, model, heat, limits),
                "errored": self._on_error,
            },
        )
        self.inspector._worker = worker
        worker.start()

    def _recolour(self) -> None:
        if not self.result:
            return
        from napari.utils.colormaps import DirectLabelColormap

        from ..layers import label_colour_dict

        table = self.result["points"].features
        md = self.result["model"].metadata
        cmap = DirectLabelColormap(
            color_dict=label_colour_dict(table, self.colour_by.value, md.classes, md.colours)
        )
        self.result["labels_layer"].colormap = cmap

    def export(self, folder) -> None:
        """Export the result as reviewed, in a worker: cells CSV, summary JSON, labels TIFF with the
        audit trail, the corrected cells as a training set, the user/model agreement and the
        folder's review page (``report.html``; opened in the browser with *open the review page*).

        The table, labels and summary are taken as they are when asked (corrections made while the
        files are written go into the next export). Library: :func:`export.iter_export_result`.
        """
        from ..export import iter_export_result

        if not self.result:
            notify("warning", "nothing to export yet")
            return
        folder = Path(str(folder or ""))
        if str(folder) in ("", "."):
            notify("warning", "choose an export folder")
            return
        r = self.result
        table = r["points"].features.drop(columns=["uncertainty"], errors="ignore").copy()
        summary = self._recount()  # with the user's corrections; the run's other entries kept
        args = (folder, r["image_layer"].name.replace("/", "_"), table, summary, np.array(r["labels"]))
        kwargs = {"input_path": r.get("image_path"), "report": True}
        image, model, params = r["image"], r["model"], r["params"]
        open_page = bool(self.export_open.value)

        def gen():
            return (yield from iter_export_result(*args, image, model, params, **kwargs))

        def done(out: dict[str, Path]) -> None:
            self.exported = out
            self.status.value = f"exported to {folder}"
            kept = (
                f"; the image has no file, so a copy is kept as {out['image'].name}" if "image" in out else ""
            )
            notify("info", f"exported to {folder}; review page: {out['report'].name}{kept}")
            if open_page:
                from .batch import open_in_browser

                if not open_in_browser(out["report"]):
                    notify("info", f"open {out['report']} in a web browser")

        self._launch((gen, done))


def _file_of_plane(image_layer) -> str | None:
    """The file an image layer was opened from, when reading it gives the plane that was analysed.

    A stack's file holds more than that plane, and a result naming it could not be reopened with
    it: export keeps the plane itself beside the result instead. A pyramid's file reads as its
    finest level, the one analysed.
    """
    path = getattr(getattr(image_layer, "source", None), "path", None)
    data = image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data
    return None if path is None or len(data.shape) > (3 if image_layer.rgb else 2) else path
