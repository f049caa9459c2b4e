"""*Train model*: the same training code as ``napari-cytodiffusion train``, in a worker."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, SpinBox

from ..errors import InputError
from ._runner import RunnerMixin, notify


class TrainWidget(Container, RunnerMixin):
    title = "Train model"
    settings_key = "train"
    persisted = ("steps", "batch_size", "arch")
    quit_on_cancel = False  # training checkpoints itself when asked to stop

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.data = FileEdit(
            label="data (folder or CSV)",
            mode="r",
            value="",
            tooltip="a folder with one sub-folder per class, or a CSV path,class[,split]",
        )
        self.out = FileEdit(label="model folder", mode="d", value="")
        self.steps = SpinBox(label="steps", value=2000, min=1, max=10_000_000)
        self.batch_size = SpinBox(label="batch size", value=64, min=1, max=4096)
        self.arch = ComboBox(label="architecture", choices=["default", "tiny"], value="default")
        self.resume = CheckBox(text="resume from checkpoint", value=False)
        self.extend([self.data, self.out, self.steps, self.batch_size, self.arch, self.resume])
        self._init_runner("Train")
        self.load_settings()

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
