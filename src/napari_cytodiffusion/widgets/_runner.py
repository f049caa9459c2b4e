"""Shared machinery: a Run/Cancel row with a progress bar, worker lifecycle and notifications."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton

from ..errors import Cancelled, CytoDiffusionError
from ..paths import cache_dir

_CANCELLED = object()


def notify(kind: str, message: str) -> None:
    from napari.utils.notifications import show_error, show_info, show_warning

    {"error": show_error, "warning": show_warning}.get(kind, show_info)(message)


class ScrollableDock:
    """For a ``Container(scrollable=True)``: ``.native`` is its scroll area, which napari docks.

    magicgui's ``.native`` of a scrollable container is the inner widget, so a dock would hold the
    widget at full height and force the window taller than a laptop's screen; with the scroll area
    the dock can be shorter than the widget and scrolls.
    """

    @property
    def native(self):
        return self.root_native_widget

    def _init_scroll(self) -> None:
        """Keep the dock as wide as the content needs (magicgui fixes it once, at the first widgets).

        Only the height scrolls: the scroll area's minimum width follows the content's minimum width
        whenever its layout changes (a legend or a table filled in later), so nothing is clipped.
        """
        from qtpy.QtCore import QEvent, QObject

        scroll, inner = self.root_native_widget, self.root_native_widget.widget()

        class _FollowWidth(QObject):
            def eventFilter(self, obj, event):  # Qt calls it by this name
                if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
                    bar = scroll.verticalScrollBar().sizeHint().width()
                    scroll.setMinimumWidth(inner.minimumSizeHint().width() + bar + 2 * scroll.frameWidth())
                return False

        self._follow_width = _FollowWidth(scroll)
        inner.installEventFilter(self._follow_width)


def time_left(done: float, seconds: float, remaining: float) -> str:
    """How long ``remaining`` units take at the pace of ``done`` units in ``seconds``.

    "about 3 h 20 min left"; '' until the pace means something (under 5 s, or no unit done yet)
    or when nothing remains.
    """
    if done <= 0 or seconds < 5 or remaining <= 0:
        return ""
    minutes = round(seconds / done * remaining / 60)
    if minutes < 1:
        return "under a minute left"
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60:02d} min left"


class RunnerMixin:
    """Adds ``run_button``, ``cancel_button``, ``progress`` and ``status`` to a Container."""

    settings_key = "widget"
    title = "the panel"  # as napari's Plugins menu names it
    #: stop a generator worker at its next yield; False lets the work finish cleanly (checkpoint)
    quit_on_cancel = True

    def _init_runner(self: Container, run_text: str) -> None:
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        self.extend([self.run_button, self.cancel_button, self.progress, self.status])
        self.run_button.changed.connect(self._start)
        self.cancel_button.changed.connect(self.cancel)
        self._stop = threading.Event()
        self.worker = None
        self._busy = False
        self._stage: tuple[str, Any] | None = None  # the current stage of the progress, for its pace
        self._stage_start: tuple[float, Any] = (0.0, 0)
        self._hooks: list[tuple[Any, Callable]] = []
        self._keys: list[tuple[str, Callable]] = []
        self._watch_dock()

    # the viewer's hold on the widget ----------------------------------------
    def hook(self, emitter: Any, callback: Callable) -> None:
        """Connect ``callback`` to a viewer or layer event until napari closes this widget's dock."""
        emitter.connect(callback)
        self._hooks.append((emitter, callback))

    def bind_viewer_key(self, key: str, func: Callable) -> None:
        """Bind a key on the viewer (whichever layer is active) until napari closes this widget's dock."""
        self.viewer.bind_key(key, func, overwrite=True)
        self._keys.append((key, func))

    def release_viewer(self) -> None:
        """Let go of the viewer: disconnect the hooked events, unbind the keys, cancel a running job.

        Called when napari's close button takes the widget out of its dock. The viewer's events and
        keys would otherwise keep the hidden widget alive and acting: Ctrl+1 labelling cells through
        a closed *Classify cells*, its lists refreshed on every new layer.
        """
        for emitter, callback in self._hooks:
            emitter.disconnect(callback)
        viewer = getattr(self, "viewer", None)  # a sub-panel has none
        if viewer is not None:
            events = viewer.layers.events  # napari's docking connects these and never lets go
            for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
                emitter.disconnect(self.reset_choices)
        for key, func in self._keys:
            unbound = viewer.bind_key(key, None)
            if unbound is not None and unbound is not func:  # a newer widget's binding: leave it
                viewer.bind_key(key, unbound)
        self._hooks, self._keys = [], []
        if self.busy():
            self.cancel()
            notify("info", f"{self.title} was closed: its running job is cancelled")

    def _watch_dock(self: Container) -> None:
        """Call :meth:`release_viewer` when the docked widget loses its dock (napari's close button)."""
        from qtpy.QtCore import QEvent, QObject

        owner = self

        class _DockWatch(QObject):
            docked = False

            def eventFilter(self, obj, event):  # Qt calls it by this name
                if event.type() == QEvent.Type.ParentChange:
                    if obj.parent() is not None:
                        self.docked = True
                    elif self.docked:
                        self.docked = False
                        owner.release_viewer()
                return False

        self._dock_watch = _DockWatch(self.native)
        self.native.installEventFilter(self._dock_watch)

    # subclasses implement
    def _work(self) -> tuple[Callable[[], Generator], Callable[[Any], None]] | None:  # pragma: no cover
        raise NotImplementedError

    def _start(self) -> None:
        try:
            job = self._work()
        except CytoDiffusionError as exc:
            notify("error", str(exc))
            return
        if job is not None:
            self._launch(job)

    def _launch(self, job: tuple[Callable[[], Generator], Callable[[Any], None]]) -> None:
        """Run a ``(generator factory, on_result)`` job in a worker, with the progress bar and Cancel."""
        gen_factory, on_result = job
        from napari.qt.threading import create_worker

        if self.busy():
            notify("warning", "wait for the running job to finish, or cancel it")
            return

        def guarded():
            try:
                return (yield from gen_factory())
            except Cancelled:
                return _CANCELLED

        def returned(value):
            if value is _CANCELLED:
                self.status.value = "cancelled"
                notify("info", "cancelled")
            else:
                self._safe(on_result, value)

        self._stop.clear()
        self._stage = None  # the pace of each stage is measured from its first progress
        self.worker = create_worker(
            guarded,
            _start_thread=False,
            _connect={
                "yielded": self._on_progress,
                "returned": returned,
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = "running…"
        self.save_settings()
        self._busy = True
        self.worker.start()

    def busy(self) -> bool:
        """Whether this widget's job is under way (from its launch, before its thread runs, to its end)."""
        return self._busy

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        self._stop.set()
        if self.worker is not None and self.quit_on_cancel:
            self.worker.quit()
        self.status.value = "cancelling…"

    def _on_progress(self, item: Any) -> None:
        if isinstance(item, tuple) and len(item) >= 2:
            done, total = item[0], item[1]
            self.progress.max = max(1, int(total))
            self.progress.value = min(int(done), self.progress.max)
            if len(item) > 2 and not self._stop.is_set():  # late steps must not hide "cancelling…"
                # a stage is its text without numbers ("loss 0.0123 — step" stays one stage)
                stage, now = (re.sub(r"[\d.,]+", "#", str(item[2])), total), time.monotonic()
                if self._stage != stage or done < self._stage_start[1]:  # a new stage: its own pace
                    self._stage, self._stage_start = stage, (now, done)
                t0, done0 = self._stage_start
                left = time_left(done - done0, now - t0, total - done)
                self.status.value = f"{item[2]}: {done}/{total}" + (f" · {left}" if left else "")

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):
            notify("info", str(exc))
        elif isinstance(exc, CytoDiffusionError):
            notify("error", str(exc))
        else:
            notify("error", f"{type(exc).__name__}: {exc}")
        self.status.value = f"stopped: {exc}"

    def _on_finished(self) -> None:
        self._busy = False
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False
        if self._stop.is_set() and self.status.value.startswith(("running", "cancelling")):
            self.status.value = "cancelled"

    def _safe(self, fn: Callable[[Any], None], value: Any) -> None:
        try:
            fn(value)
        except CytoDiffusionError as exc:
            notify("error", str(exc))

    # parameter persistence -------------------------------------------------
    # The values are saved with the defaults they were saved against: a value left at the default of
    # its day follows the default of a later version (a default changed on measurements reaches every
    # user who never chose otherwise), while a value the user chose is kept.
    persisted: tuple[str, ...] = ()

    def save_settings(self: Container) -> None:
        path = cache_dir() / "widget_settings.json"
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            data = {}
        data[self.settings_key] = {n: _jsonable(getattr(self, n).value) for n in self.persisted}
        defaults = getattr(self, "_setting_defaults", None)
        if defaults is not None:
            data[f"{self.settings_key}.defaults"] = defaults
        from ..io.atomic import write_json

        try:
            write_json(path, data)
        except CytoDiffusionError:
            pass  # settings are a convenience; an unwritable cache must not block work

    def load_settings(self: Container) -> None:
        if not hasattr(self, "_setting_defaults"):  # the widget's own defaults, before any saved value
            self._setting_defaults = {n: _jsonable(getattr(self, n).value) for n in self.persisted}
        path = cache_dir() / "widget_settings.json"
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            saved = data.get(self.settings_key, {})
            then = data.get(f"{self.settings_key}.defaults", FORMER_DEFAULTS)
        except (OSError, json.JSONDecodeError, AttributeError):
            return
        if not isinstance(saved, dict) or not isinstance(then, dict):
            return  # not a file this version wrote
        for name, value in saved.items():
            if name in then and value == then[name] != self._setting_defaults.get(name):
                continue  # left at the default of its day, which has changed since: the new one
            if name in self.persisted:
                try:
                    getattr(self, name).value = value
                except (ValueError, TypeError):
                    continue  # a stale value that the widget no longer accepts


#: defaults that changed before settings were saved with their defaults (files of those versions hold
#: values only): such a value equal to its former default was never chosen, so it takes the new one
#: (the border mirror, off before, is 0.05 cell diameters by default)
FORMER_DEFAULTS: dict[str, Any] = {"border_pad": 0.0}


def _jsonable(v: Any) -> Any:
    from pathlib import Path

    return str(v) if isinstance(v, Path) else v


def relay(items, label: str):
    """Worker generator over a core generator that yields ``(done, total)`` tuples, then its result.

    Progress is passed on with ``label`` for the status line; the final item becomes the
    worker's return value.
    """
    result = None
    for item in items:
        if isinstance(item, tuple):
            yield (*item, label)
        else:
            result = item
    return result


def unique_layer_name(viewer, base: str) -> str:
    """A layer name not used yet in ``viewer`` (user layers are never overwritten)."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    i = 2
    while f"{base} [{i}]" in names:
        i += 1
    return f"{base} [{i}]"


def n_cells(n: int) -> str:
    """``"1 cell"``, ``"3 cells"``: for status lines."""
    return f"{n} cell" if n == 1 else f"{n} cells"


def append_panel(parent: Container, panel: Container, title: str) -> None:
    """Append a sub-panel under a bold title, both using the parent's full width.

    A labelled magicgui container gives every child a label column; a sub-panel's label is empty,
    so it would sit indented by that column and squeeze its own labelled rows.
    """
    heading = Label(value=f"<b>{title}</b>")
    for w in (heading, panel):
        append_full_width(parent, w)


def append_full_width(parent: Container, widget) -> None:
    """Append a widget without a label, using the parent's full width (a table, a line of text)."""
    parent.append(widget)
    wrapper = widget._labeled_widget() if hasattr(widget, "_labeled_widget") else None
    if wrapper is not None:  # hide the empty label column magicgui added
        wrapper._label_widget.visible = False
