"""Cell inspector: the selected cell's crop, probability bars, certainty and a counterfactual heat map."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider, Image, Label, PushButton


def probability_bars(probs: dict[str, float], colours: dict[str, str], width: int = 24) -> str:
    """HTML bars (monospace) for a class → probability mapping, most likely first."""
    rows = []
    for c, p in sorted(probs.items(), key=lambda kv: -kv[1]):
        n = int(round(p * width))
        rows.append(
            f"<span style='color:{colours.get(c, '#888')}'>{'█' * n}</span>{'·' * (width - n)} {p:6.1%} {c}"
        )
    return "<pre style='margin:0'>" + "<br>".join(rows) + "</pre>"


def side_by_side(crop: np.ndarray, heat: np.ndarray | None, scale: int = 4) -> np.ndarray:
    """The crop and (if given) its heat map as one RGB image, upsampled for display."""
    import matplotlib

    panels = [crop]
    if heat is not None:
        h = heat / (heat.max() + 1e-9)
        panels.append((matplotlib.colormaps["inferno"](h)[..., :3] * 255).astype(np.uint8))
    img = np.concatenate(panels, axis=1)
    return np.kron(img, np.ones((scale, scale, 1), np.uint8))


class CellInspector(Container):
    """Shows one cell of a classification result; owned by the Classify widget."""

    def __init__(self) -> None:
        super().__init__(labels=True)
        self.title = Label(label="cell", value="select a cell in the points layer")
        self.target = ComboBox(
            label="change to",
            choices=[],
            tooltip="target class of the heat map (where the cell would have to change) and of the counterfactual",
        )
        self.image = Image(label="crop | heat map", value=np.zeros((8, 8, 3), np.uint8))
        self.bars = Label(label="probabilities", value="")
        self.strength = FloatSlider(
            label="redraw strength",
            value=0.5,
            min=0.1,
            max=0.9,
            step=0.05,
            tooltip="how far the cell is noised before it is redrawn as the target class (SDEdit)",
        )
        self.sdedit_button = PushButton(text="Counterfactual: redraw as that class (new layer)")
        self.next_button = PushButton(text="Next cell to label (most useful first)")
        self.queue_info = Label(value="")
        self.extend(
            [
                self.title,
                self.target,
                self.image,
                self.bars,
                self.strength,
                self.sdedit_button,
                self.next_button,
                self.queue_info,
            ]
        )
        self._worker = None

    def show(
        self, row, crop: np.ndarray, model, heat: np.ndarray | None, limits: tuple[float, float] | None = None
    ) -> None:
        """Show a cell; ``limits`` (flag below this P(correct), above this anomaly score) go beside its figures."""
        classes, colours = (
            model.metadata.classes,
            dict(zip(model.metadata.classes, model.metadata.colours, strict=True)),
        )
        self.title.value = (
            f"cell {int(row['label'])}: {row['class']} — certainty {row['certainty']:.2f}, "
            f"P(correct) {row['p_correct']:.2f}{_limit('flag below', limits, 0)}, "
            f"anomaly {row['anomaly']:.2f}{_limit('flag above', limits, 1)}"
            + (" — FLAGGED" if row["flagged"] else "")
            + (f": {row['flag_reason']}" if row["flagged"] and str(row.get("flag_reason") or "") else "")
            + (
                f" (size {row['size']:.2f} red-cell diameters: too small or large for "
                f"{row.get('class_by_appearance', row['class'])}, the class it looks like)"
                if bool(row.get("size_implausible", False))
                else ""
            )
        )
        probs = {c: float(row.get(f"p_{c}", np.nan)) for c in classes}
        self.bars.value = probability_bars({c: p for c, p in probs.items() if np.isfinite(p)}, colours)
        panel = side_by_side(crop, heat)
        # the image widget takes only the height its row is given: reserve the panel's
        self.image.min_height = panel.shape[0]
        self.image.value = panel


def _limit(words: str, limits: tuple[float, float] | None, i: int) -> str:
    """`` (flag below 0.90)``: how near a figure is to flagging the cell (a draw moves it; measurements.md)."""
    if limits is None or not np.isfinite(limits[i]):
        return ""
    return f" ({words} {limits[i]:.2f})"
