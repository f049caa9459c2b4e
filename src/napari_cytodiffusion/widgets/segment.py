"""*Segment cells*: image layer → Labels layer, with the project's Cellpose smear model."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox

from ..errors import InputError
from ._controls import border_pad_box, gpu_box, platelets_box, segmentation_model_choice
from ._planes import plane_words, shown_index, shown_plane
from ._runner import RunnerMixin, n_cells, notify, relay, unique_layer_name


class SegmentWidget(Container, RunnerMixin):
    title = "Segment cells"
    settings_key = "segment"
    persisted = (
        "model",
        "diameter",
        "flow_threshold",
        "cellprob_threshold",
        "min_size",
        "max_size_fraction",
        "exclude_border",
        "border_pad",
        "augment",
        "large_cells",
        "platelets",
        "gpu",
    )

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._images)
        self.model = segmentation_model_choice()
        self.diameter = FloatSpinBox(label="diameter (0 = auto)", value=0.0, min=0.0, max=1000.0)
        self.flow_threshold = FloatSpinBox(label="flow threshold", value=0.4, min=0.0, max=3.0, step=0.05)
        self.cellprob_threshold = FloatSpinBox(
            label="cell prob. threshold", value=0.0, min=-6.0, max=6.0, step=0.25
        )
        self.min_size = SpinBox(label="min size (px)", value=15, min=0, max=100000)
        self.max_size_fraction = FloatSpinBox(
            label="max size (of image)",
            value=0.9,
            min=0.05,
            max=1.0,
            step=0.05,
            tooltip="masks larger than this fraction of the image are dropped as spurious",
        )
        self.exclude_border = CheckBox(text="exclude border cells", value=False)
        self.border_pad = border_pad_box()
        self.augment = CheckBox(
            text="test-time augmentation",
            value=False,
            tooltip="each network tile also seen flipped, predictions averaged (slower)",
        )
        self.large_cells = CheckBox(
            text="look for large cells",
            value=True,
            tooltip="a second pass at twice the diameter adds cells over twice the size of the rest "
            "that the first pass missed (a white cell among small red cells); ~20 % slower",
        )
        self.platelets = platelets_box()
        self.gpu = gpu_box()
        self.extend(
            [
                self.image,
                self.model,
                self.diameter,
                self.flow_threshold,
                self.cellprob_threshold,
                self.min_size,
                self.max_size_fraction,
                self.exclude_border,
                self.border_pad,
                self.augment,
                self.large_cells,
                self.platelets,
                self.gpu,
            ]
        )
        self._init_runner("Segment")
        self.load_settings()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self.hook(ev, lambda e: self.image.reset_choices())

    def _images(self, _=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def params(self):
        from ..segmentation.cellpose_seg import SegmentParams

        return SegmentParams(
            model=self.model.value,
            diameter=self.diameter.value or None,
            flow_threshold=self.flow_threshold.value,
            cellprob_threshold=self.cellprob_threshold.value,
            min_size=self.min_size.value,
            max_size_fraction=self.max_size_fraction.value,
            exclude_border=self.exclude_border.value,
            border_pad=self.border_pad.value,
            augment=self.augment.value,
            large_cells=self.large_cells.value,
            platelets=self.platelets.value,
            gpu=self.gpu.value,
        )

    def _work(self):
        from ..segmentation.cellpose_seg import iter_segment

        layer = self.image.value
        if layer is None:
            raise InputError("add or open an image first")
        data = shown_plane(layer, self.viewer)  # full resolution; a stack's current plane
        plane = shown_index(layer, self.viewer)
        params = self.params()
        scale, translate, name = layer.scale[-2:], layer.translate[-2:], layer.name
        # a stack's labels are of one plane: the name says which, and Classify cells checks it
        about = {"source": name, "segmentation": params.to_dict()}
        if plane:
            about["plane"] = list(plane)
        layer_name = f"{name} labels" + (f" ({plane_words(plane)})" if plane else "")

        def gen():
            scale: dict = {}
            labels = yield from relay(
                iter_segment(data, params, should_stop=self.should_stop, info=scale), "tiles"
            )
            about["segmentation"].update(scale)  # the diameter it was segmented at, for the record
            return labels

        def done(labels):
            new = self.viewer.add_labels(
                labels,
                name=unique_layer_name(self.viewer, layer_name),
                scale=scale,
                translate=translate,
                metadata={"napari-cytodiffusion": about},
            )
            d = about["segmentation"].get("diameter_used_px")
            at = f" (cells of {d:.0f} px, {about['segmentation']['diameter_from']})" if d else ""
            self.status.value = f"{n_cells(int(labels.max()))}{at} → '{new.name}'"
            notify("info", self.status.value)

        return gen, done
