"""Screenshot of the plugin in napari from a real run (docs/images/napari_classify.png).

Runs the Segment and Classify widgets on the bundled sample smear with the default models, in a real viewer
(needs a display; under CI use Xvfb).  python scripts/make_screenshot.py [--out docs/images/napari_classify.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/images/napari_classify.png"))
    args = ap.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-cytodiffusion", "synthetic_smear")
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-cytodiffusion", "Segment cells")
    _, cls = viewer.window.add_plugin_dock_widget("napari-cytodiffusion", "Classify cells")
    app = QApplication.instance()

    def run(widget):
        widget.run_button.clicked()
        while not (widget.worker is not None and widget.run_button.enabled):
            app.processEvents()

    run(seg)
    viewer.window.remove_dock_widget(seg_dock)  # the classifier's dock gets the height
    cls.image.reset_choices()
    cls.labels_layer.reset_choices()
    cls.labels_layer.value = viewer.layers["sample smear (generated cells) labels"]
    cls.cells.value = "stained"
    run(cls)
    for _ in range(20):
        app.processEvents()
    cls.native.ensureWidgetVisible(cls.keys_line.native)  # the dock scrolls: show the legend and the keys
    for _ in range(5):
        app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
