"""*Train model*: the same training code as ``napari-cytodiffusion train``, in a worker."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, SpinBox

from ..errors import InputError
from ._runner import RunnerMixin, notify

FOLDER_DATA = "folder of class sub-folders"
CSV_DATA = "CSV file"


class TrainWidget(Container, RunnerMixin):
    title = "Train model"
    settings_key = "train"
    persisted = ("data_kind", "steps", "batch_size", "arch")
    quit_on_cancel = False  # training checkpoints itself when asked to stop

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.data_kind = ComboBox(
            label="training data",
            choices=[FOLDER_DATA, CSV_DATA],
            value=FOLDER_DATA,
            tooltip="what the data field's button chooses; a path typed in is read either way",
        )
        self.data = FileEdit(
            label="data",
            mode="d",
            value="",
            tooltip="a folder with one sub-folder per class, or a CSV path,class[,split] "
            "(e.g. the corrections exported by Classify cells)",
        )
        self.data_kind.changed.connect(self._data_kind_changed)
        self.out = FileEdit(label="model folder", mode="d", value="")
        self.steps = SpinBox(label="steps", value=2000, min=1, max=10_000_000)
        self.batch_size = SpinBox(label="batch size", value=64, min=1, max=4096)
        self.arch = ComboBox(label="architecture", choices=["default", "tiny"], value="default")
        self.resume = CheckBox(text="resume from checkpoint", value=False)
        self.extend(
            [self.data_kind, self.data, self.out, self.steps, self.batch_size, self.arch, self.resume]
        )
        self._init_runner("Train")
        self.load_settings()
        self._data_kind_changed(self.data_kind.value)

    def _data_kind_changed(self, kind: str) -> None:
        """The data field's button picks a folder or a CSV file, as the user said the data is."""
        self.data.mode = "d" if kind == FOLDER_DATA else "r"
        self.data.filter = None if kind == FOLDER_DATA else "*.csv"

    def _work(self):
        from ..model.architecture import DEFAULT_ARCH, TINY_ARCH
        from ..model.train import TrainConfig, prepare_training_data, train

        data_path, out = str(self.data.value or ""), str(self.out.value or "")
        if data_path in ("", ".") or out in ("", "."):
            raise InputError("choose the training data and a model folder")
        arch = dict(TINY_ARCH if self.arch.value == "tiny" else DEFAULT_ARCH)
        cfg = TrainConfig(
            steps=self.steps.value,
            batch_size=self.batch_size.value,
            arch=arch,
            warmup_steps=min(500, max(1, self.steps.value // 10)),
            checkpoint_every=max(10, self.steps.value // 20),
        )
        resume = self.resume.value

        def gen():
            yield (0, cfg.steps, "reading data")
            data = prepare_training_data(data_path, cfg.size, store_margin=cfg.store_margin)
            last = None
            for ev in train(data, out, cfg, resume=resume, should_stop=self.should_stop):
                last = ev
                if ev.get("stage") == "int8":
                    yield (ev["step"], ev["total"], "writing the int8 network — step")
                else:
                    yield (ev["step"], ev["total"], f"loss {ev['loss']:.4f} — step")
            return last

        def done(last):
            if last is None:
                return
            self.status.value = f"model written to {last['model_dir']}"
            notify("info", self.status.value)

        return gen, done
