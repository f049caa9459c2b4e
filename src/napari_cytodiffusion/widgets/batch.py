"""*Analyze smears*: a folder of smear images → per-image results and a cohort table (``analyze``).

Runs :func:`~napari_cytodiffusion.batch.iter_analysis` in a worker: in napari's process, or on
dask workers. The cohort table of the output folder is shown as it stands after the run (or
when an output folder that holds one is chosen); any finished image opens for review in the
*Classify cells* widget, with its legend, cell inspector and corrections, and the folder's review
page (``report.html``: differential, alerts, flagged cells, cells by class) is written again, with
the corrections saved since, and opened in the web browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    Table,
)

from ..batch.slides import SLIDES_TABLE
from ..errors import InputError
from ._controls import (
    border_pad_box,
    cells_choice,
    gpu_box,
    platelets_box,
    red_cell_px_box,
    segmentation_model_choice,
    size_check_box,
    speed_choice,
)
from ._model import model_picker, model_spec
from ._runner import RunnerMixin, ScrollableDock, append_full_width, notify

#: the cohort columns the table shows (``cohort.csv`` holds more) and their headers
TABLE_COLUMNS = {
    "image": "image",
    "status": "status",
    "n_cells": "cells",
    "n_classified": "classified",
    "n_white_cells": "white cells",
    "percent_flagged": "% flagged",
    "n_anomalous": "anomalous",
    "verdict": "verdict",
    "error": "error",
}
#: the plugin and widget names under which napari lists the review widget
PLUGIN, REVIEW_WIDGET = "napari-cytodiffusion", "Classify cells"


class BatchWidget(ScrollableDock, Container, RunnerMixin):
    title = "Analyze smears"
    settings_key = "batch"
    persisted = (
        "input_dir",
        "pattern",
        "out_dir",
        "model_dir",
        "model_name",
        "speed",
        "cells",
        "size_check",
        "pool_scale",
        "red_cell_px",
        "seg_model",
        "platelets",
        "border_pad",
        "gpu",
        "workers",
        "by_folder",
    )

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True, scrollable=True)  # taller than a laptop's screen
        self._init_scroll()
        self.viewer = napari_viewer
        self._rows: list[dict[str, Any]] = []  # the cohort table of the output folder
        self.input_dir = FileEdit(label="smears folder", mode="d", value="")
        self.pattern = LineEdit(
            label="file pattern",
            value="",
            tooltip="e.g. *.jpg or slide7_*; empty: every image in the folder",
        )
        self.out_dir = FileEdit(
            label="output folder",
            mode="d",
            value="",
            tooltip="per image NAME_labels.tif, NAME_cells.csv, NAME_summary.json; cohort.csv and "
            "analyze.log for all; images finished here before are skipped",
        )
        self.model_name, self.model_dir, self.model_info = model_picker()
        self.speed = speed_choice()
        self.cells = cells_choice()
        self.size_check = size_check_box()
        self.pool_scale = CheckBox(
            text="one scale for all images",
            value=False,
            tooltip="images of one camera and magnification: measure a red cell's size once over the "
            "whole red cells of every image (for cell-centred images with few red cells each); "
            "every image is segmented before any is classified",
        )
        self.red_cell_px = red_cell_px_box()
        self.seg_model = segmentation_model_choice("segmentation")
        self.platelets = platelets_box()
        self.border_pad = border_pad_box()
        self.gpu = gpu_box()
        self.by_folder = CheckBox(
            text="one slide per sub-folder",
            value=False,
            tooltip="each sub-folder of the smears folder is one slide (or patient), analysed on its own "
            "into a sub-folder of the output folder: its own differential, alerts, domain check and report; "
            "slides.csv lists the slides",
        )
        self.workers = SpinBox(
            label="workers",
            value=1,
            min=1,
            max=64,
            tooltip="1: in napari's own process; more: that many dask worker processes (on 2 cores "
            "they do not add throughput)",
        )
        self.extend(
            [
                self.input_dir,
                self.pattern,
                self.out_dir,
                self.model_name,
                self.model_dir,
                self.model_info,
                self.speed,
                self.cells,
                self.size_check,
                self.pool_scale,
                self.red_cell_px,
                self.seg_model,
                self.platelets,
                self.border_pad,
                self.gpu,
                self.by_folder,
                self.workers,
            ]
        )
        self._init_runner("Analyze")
        self.cohort_line = Label(value="")
        self.cohort_line.native.setWordWrap(True)
        from qtpy.QtWidgets import QSizePolicy

        # the whole width, not a narrow centred column of text
        self.cohort_line.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.table = Table(value=([], [], list(TABLE_COLUMNS.values())))
        self.table.read_only = True
        self.table.min_height = 220
        self.slide = ComboBox(
            label="slide",
            choices=self._slides,
            tooltip="the slide whose images the table shows",
            visible=False,
        )
        self.result = ComboBox(
            label="result", choices=self._finished, tooltip="an image finished in the folder"
        )
        self.open_button = PushButton(text="Open for review")
        self.report_button = PushButton(
            text="Open report",
            tooltip="write the folder's report.html again (with corrections saved since) and open it in "
            "the web browser: differential, alerts, flagged cells first, every cell by class",
        )
        self.extend([self.slide])
        for widget in (self.cohort_line, self.table):
            append_full_width(self, widget)
        self.extend([self.result, self.open_button, self.report_button])
        self.open_button.changed.connect(lambda: self.open_result(self.result.value))
        self.report_button.changed.connect(self.open_report)
        self.out_dir.changed.connect(lambda: self.show_cohort())
        self.slide.changed.connect(lambda: self.show_cohort(keep_slide=True))
        self.load_settings()
        self.show_cohort()

    # the run ----------------------------------------------------------------
    def paths(self) -> list[Path]:
        """The images the run would analyse (bad input: :class:`InputError`)."""
        from ..io.images import check_distinct_stems, image_paths

        folder = str(self.input_dir.value or "").strip()
        if folder in ("", "."):
            raise InputError("choose the folder of smear images to analyse")
        if not Path(folder).is_dir():
            raise InputError(f"the smears folder {folder} does not exist")
        pattern = self.pattern.value.strip()
        if self.by_folder.value:
            from ..batch import slide_groups

            paths = _slide_images(Path(folder), pattern)
            slide_groups(paths)  # within a slide, a.png and a.jpg would share their outputs
            return paths
        paths = image_paths([str(Path(folder) / pattern) if pattern else folder])
        check_distinct_stems(paths)  # a.png and a.jpg would share their outputs
        return paths

    def output(self) -> Path:
        from ..io.atomic import writable_folder

        folder = str(self.out_dir.value or "").strip()
        if folder in ("", "."):
            raise InputError("choose an output folder")
        return writable_folder(folder)

    def options(self) -> dict[str, Any]:
        from ..batch import analysis_options
        from ..segmentation.cellpose_seg import SegmentParams

        spec = model_spec(self.model_name, self.model_dir)
        if spec is None:
            raise InputError("choose a model folder")
        return analysis_options(
            model=spec,
            speed=self.speed.value,
            cells=self.cells.value,
            size_check=self.size_check.value,
            red_cell_px=self.red_cell_px.value or None,
            pool_scale=self.pool_scale.value,
            device="auto",  # the classifier on a CUDA GPU when there is one
            segmentation=SegmentParams(
                model=self.seg_model.value,
                platelets=self.platelets.value,
                border_pad=self.border_pad.value,
                gpu=self.gpu.value,
            ),
        )

    def _work(self):
        from ..batch import iter_analysis, iter_slides
        from ..model.registry import get_model

        paths, out, options = self.paths(), self.output(), self.options()
        workers, lines = int(self.workers.value), []
        run = iter_slides if self.by_folder.value else iter_analysis

        def gen():
            yield (0, len(paths), "loading the model")
            # in the worker (a first load takes seconds); a broken model is said now, not per image
            get_model(options["model"], device=options["device"])
            return (yield from run(paths, out, options, workers=workers, say=lines.append))

        def done(report: dict[str, Any]) -> None:
            self.show_cohort()
            skipped = f", {report['skipped']} done before" if report.get("skipped") else ""
            self.status.value = (
                f"{report['ok']} analysed, {report['failed']} failed{skipped} ({report['seconds']:.0f} s)"
            )
            if report["failed"]:
                notify(
                    "warning",
                    f"{report['failed']} of {report['ok'] + report['failed']} images failed: see the table",
                )
            check = report.get("domain_check")
            if check and check["shifted"]:
                notify(
                    "warning", next((ln for ln in lines if ln.startswith("warning: over")), "cohort shifted")
                )
            flagged = [
                r["slide"] for r in report.get("slides", []) if r["alerts"] or r["unlike_training_cells"]
            ]
            if flagged:
                notify(
                    "warning",
                    f"alerts or a domain shift on slide {', '.join(map(str, flagged))}: see the table",
                )
            if report.get("hint"):
                notify("info", report["hint"])

        return gen, done

    def _on_progress(self, item: Any) -> None:
        if self._stop.is_set():  # progress still queued when Cancel was pressed
            return
        done, total, what = item
        self.progress.max = max(1, int(total))
        self.progress.value = min(int(done), self.progress.max)
        self.status.value = f"{done}/{total} images · {what}"

    def _on_finished(self) -> None:
        super()._on_finished()
        if self._stop.is_set():
            self.show_cohort()  # what finished before the cancel stays, and is shown

    # the cohort -------------------------------------------------------------
    def _slides(self, _=None) -> list[str]:
        """The slides of the output folder (``slides.csv`` of a run with one slide per sub-folder)."""
        import pandas as pd

        folder = Path(str(self.out_dir.value or "").strip() or ".")
        f = folder / SLIDES_TABLE
        if str(folder) == "." or not f.is_file():
            return []
        try:
            return [str(s) for s in pd.read_csv(f)["slide"]]
        except (OSError, ValueError, KeyError):
            return []

    def results_folder(self) -> Path:
        """The folder the table shows: the output folder, or the chosen slide's sub-folder of it."""
        folder = Path(str(self.out_dir.value or "").strip() or ".")
        return folder / self.slide.value if self.slide.choices and self.slide.value else folder

    def show_cohort(self, keep_slide: bool = False) -> None:
        """Fill the table (and the result list) from the results folder's ``cohort.csv``, and the
        line above it from its pooled domain check and white-cell differential."""
        import pandas as pd

        if not keep_slide:
            self.slide.reset_choices()
            self.slide.visible = bool(self.slide.choices)
        self._rows, lines = [], []
        folder = self.results_folder()
        if str(folder) != "." and (folder / "cohort.csv").is_file():
            try:
                table = pd.read_csv(folder / "cohort.csv")
            except (OSError, ValueError) as exc:
                lines.append(f"cannot read {folder / 'cohort.csv'}: {exc}")
            else:
                self._rows = table.astype(object).where(table.notna(), None).to_dict("records")
            lines += [ln for ln in (_cohort_check(folder), _cohort_differential(folder)) if ln]
        if self.slide.choices:
            lines.insert(0, _slides_line(Path(str(self.out_dir.value)) / SLIDES_TABLE, self.slide.value))
        self.table.value = (
            [[_cell(r.get(c)) for c in TABLE_COLUMNS] for r in self._rows],
            [],
            list(TABLE_COLUMNS.values()),
        )
        self.table.native.resizeColumnsToContents()
        self.cohort_line.value = "<br>".join(lines)
        self.result.reset_choices()

    def open_report(self) -> None:
        """Write the output folder's ``report.html`` in a worker, then open it in the web browser."""
        from ..report import iter_report

        folder = self.results_folder()
        if str(folder) == "." or not self._finished():
            notify("warning", "no finished image to report on: run the analysis or choose its output folder")
            return

        def gen():
            return (yield from iter_report(folder))

        def done(page: Path) -> None:
            self.status.value = f"report: {page}"
            if not open_in_browser(page):
                notify("info", f"open {page} in a web browser")

        self._launch((gen, done))

    def _finished(self, _=None) -> list[str]:
        return [str(r["image"]) for r in self._rows if r.get("status") == "ok"]

    def open_result(self, image: str | None) -> None:
        """Open one finished image's result in the *Classify cells* widget, for review."""
        if not image:
            notify("warning", "no finished image to open: run the analysis or choose its output folder")
            return
        summary = self.results_folder() / f"{Path(image).stem}_summary.json"
        if not summary.is_file():
            notify("error", f"{summary} is missing: analyse the image again")
            return
        _, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, REVIEW_WIDGET)
        row = next((r for r in self._rows if str(r["image"]) == image), {})
        source = row.get("path")
        widget.open_saved(str(summary), source if source and Path(source).is_file() else None)


def _slides_line(path: Path, shown: str) -> str:
    """``"3 slides; alerts or a domain shift on: p2. Slide p1:"``, above the chosen slide's lines."""
    from html import escape

    import pandas as pd

    try:
        table = pd.read_csv(path)
        marked = [
            str(r["slide"])
            for r in table.to_dict("records")
            if (isinstance(r.get("alerts"), str) and r["alerts"])
            or str(r.get("unlike_training_cells")) == "True"
        ]
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot read {path}: {exc}"
    head = f"{len(table)} slide{'s' if len(table) != 1 else ''}"
    head += f"; alerts or a domain shift on: {escape(', '.join(marked))}" if marked else "; no alerts"
    return f"{head}. <b>Slide {escape(shown)}</b>:"


def _slide_images(folder: Path, pattern: str) -> list[Path]:
    """The images of ``folder`` and of its sub-folders (one slide each), matching ``pattern`` if given."""
    from ..io.images import IMAGE_SUFFIXES, image_paths

    if not pattern:
        return image_paths([folder], subfolders=True)
    found = sorted(folder.glob(pattern)) + sorted(folder.glob(f"*/{pattern}"))
    paths = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise InputError(f"no images match {pattern} in {folder} or its sub-folders")
    return paths


def open_in_browser(page: Path) -> bool:
    """Open a local page in the system's web browser; False when none could be started."""
    from qtpy.QtCore import QUrl
    from qtpy.QtGui import QDesktopServices

    return bool(QDesktopServices.openUrl(QUrl.fromLocalFile(str(page.resolve()))))


def _cell(v: Any) -> Any:
    """A table cell: whole numbers as such, other numbers to one decimal, text as it is."""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.1f}"
    return "" if v is None else v


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    import json

    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"


def _cohort_check(folder: Path) -> str | None:
    """The line for ``cohort_domain_check.json``."""
    d, problem = _read_json(folder / "cohort_domain_check.json")
    if d is None:
        return problem
    try:
        return (
            f"cohort: {d['n_anomalous']} of {d['n']} classified cells over {d['images']} images anomalous "
            f"({d['expected_fraction']:.0%} expected): "
            + ("unlike the model's training cells — review" if d["shifted"] else "like the training cells")
        )
    except (KeyError, TypeError, ValueError) as exc:
        return f"cannot read {folder / 'cohort_domain_check.json'}: {exc!r}"


def _cohort_differential(folder: Path) -> str | None:
    """The line for ``cohort_differential.json``."""
    from ..differential import differential_line

    d, problem = _read_json(folder / "cohort_differential.json")
    if d is None:
        return problem
    try:
        line = differential_line(d)
        alerts = d.get("alerts") or []
        return "<br>".join(x for x in (line, *(f"<b>alert</b>: {a}" for a in alerts)) if x) or None
    except (KeyError, TypeError, ValueError) as exc:
        return f"cannot read {folder / 'cohort_differential.json'}: {exc!r}"
