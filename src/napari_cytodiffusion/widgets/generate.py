"""*Generate cells*: synthetic cells of a class as an image stack, plus an optional montage."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton, SpinBox

from ..errors import CytoDiffusionError, InputError, ModelError
from ..model.card import model_classes
from ._model import model_picker, model_spec
from ._runner import RunnerMixin, n_cells, notify, relay, unique_layer_name


class GenerateWidget(Container, RunnerMixin):
    title = "Generate cells"
    settings_key = "generate"
    persisted = ("model_dir", "model_name", "count", "seed", "steps", "guidance", "scheduler")

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.model_name, self.model_dir, self.model_info = model_picker()
        self.cls = ComboBox(label="class", choices=self._classes)
        self.count = SpinBox(label="count", value=8, min=1, max=1024)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.steps = SpinBox(label="steps", value=25, min=1, max=1000)
        self.guidance = FloatSpinBox(label="guidance scale", value=4.0, min=0.0, max=20.0, step=0.5)
        self.scheduler = ComboBox(label="sampler", choices=["dpm-sde", "dpm", "ddim"], value="dpm-sde")
        self.montage = CheckBox(text="add montage layer", value=True)
        self.export_button = PushButton(text="Export last result…")
        self.extend(
            [
                self.model_name,
                self.model_dir,
                self.model_info,
                self.cls,
                self.count,
                self.seed,
                self.steps,
                self.guidance,
                self.scheduler,
                self.montage,
            ]
        )
        self._init_runner("Generate")
        self.append(self.export_button)
        self.export_button.changed.connect(self._export)
        for w in (self.model_name, self.model_dir):
            w.changed.connect(lambda: self.cls.reset_choices())
        self.load_settings()
        self._last = None

    def _classes(self, _=None):
        try:  # from the metadata: no weights are read on the GUI thread
            return ["all", *model_classes(model_spec(self.model_name, self.model_dir))]
        except ModelError:  # not a model folder (yet): offer nothing more
            return ["all"]

    def _work(self):
        from ..generate.sampling import GenerateParams, iter_generate
        from ..model.registry import get_model

        spec = model_spec(self.model_name, self.model_dir)
        if spec is None:
            raise InputError("choose a model folder")
        names = model_classes(spec)  # from the metadata; the weights are loaded in the worker
        if self.cls.value is None:
            raise InputError("choose a class")
        if self.cls.value != "all" and self.cls.value not in names:
            raise InputError(f"the model has no class {self.cls.value!r}")
        classes = list(range(len(names))) if self.cls.value == "all" else [names.index(self.cls.value)]
        ids = [c for c in classes for _ in range(self.count.value)]
        seeds = [self.seed.value + i for i in range(len(ids))]
        params = GenerateParams(
            steps=self.steps.value, guidance=self.guidance.value, scheduler=self.scheduler.value
        )
        # what the result is named and shown as is what was asked, whatever the fields say by its end
        asked, count, with_montage = self.cls.value, self.count.value, self.montage.value

        def gen():
            yield (0, 1, "loading the model")
            # in the worker: a first load (or a download) takes seconds
            model = get_model(spec, device="auto")
            images = yield from relay(
                iter_generate(model, ids, seeds, params, should_stop=self.should_stop), "denoising"
            )
            return images, model

        def done(result):
            from ..generate.sampling import montage

            images, model = result

            frames = [{"class": model.classes[c], "seed": s} for c, s in zip(ids, seeds, strict=True)]
            meta = {
                "napari-cytodiffusion": {
                    "frames": frames,
                    "params": params.to_dict(),
                    "model": model.short_id(),
                }
            }
            name = unique_layer_name(self.viewer, f"generated {asked}")
            fresh = len(self.viewer.layers) == 0
            self.viewer.add_image(images, name=name, rgb=True, metadata=meta)
            if with_montage:
                # beside the stack's frame, not under it
                self.viewer.add_image(
                    montage(images, count if len(classes) > 1 else min(8, len(images)), 1),
                    name=unique_layer_name(self.viewer, f"{name} montage"),
                    rgb=True,
                    translate=(0, images.shape[2] + 8),
                )
                if fresh:  # the first layer set the view to one frame; show both
                    self.viewer.reset_view()
            self._last = (images, frames, params, model)
            self.status.value = f"{n_cells(len(images))} generated"

        return gen, done

    def _export(self) -> None:
        if self._last is None:
            notify("warning", "generate some cells first")
            return
        from magicgui.widgets import request_values

        values = request_values(folder={"annotation": "pathlib.Path", "options": {"mode": "d"}})
        if not values:
            return
        try:
            self.export_to(values["folder"])
        except CytoDiffusionError as exc:
            notify("error", str(exc))

    def export_to(self, folder) -> None:
        """Write the last generated cells as ``folder/CLASS/CLASS_seedS.png`` + recipe (never over other cells)."""
        from ..generate.export import write_generated
        from ..io.atomic import writable_folder

        images, frames, params, model = self._last
        records = [{**fr, **params.to_dict(), "model": model.short_id()} for fr in frames]
        write_generated(writable_folder(folder, "export folder"), images, records)
        notify("info", f"exported {len(images)} images to {folder}")
