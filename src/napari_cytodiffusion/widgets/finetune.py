"""*Fine-tune on corrections*: a LoRA adapter from the cells the user corrected, then re-classify.

Owned by the Classify widget (it holds the result being corrected); the work runs in a worker
with progress and cancel, and the re-classified smear arrives as a new points layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import Container, FileEdit, SpinBox

from ..errors import InputError
from ._runner import RunnerMixin, notify


class FinetunePanel(Container, RunnerMixin):
    title = "Fine-tuning"
    settings_key = "finetune"
    persisted = ("rank", "steps")

    def __init__(self, get_result: Callable[[], dict | None], show: Callable[..., None]) -> None:
        super().__init__(labels=True)
        self._get_result = get_result
        self._show_result = show
        self.rank = SpinBox(label="LoRA rank", value=8, min=1, max=64)
        self.steps = SpinBox(label="fine-tune steps", value=200, min=1, max=100000)
        self.adapter_dir = FileEdit(
            label="adapter folder",
            mode="d",
            value="",
            tooltip="where the adapter is saved (empty = the cache folder)",
        )
        self.extend([self.rank, self.steps, self.adapter_dir])
        self._init_runner("Fine-tune on corrections")
        self.load_settings()

    def _target(self, image_name: str) -> Path:
        from ..paths import cache_dir

        v = str(self.adapter_dir.value or "")
        if v not in ("", "."):
            return Path(v)
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_name)
        return cache_dir() / "adapters" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"

    def _work(self):
        from ..adapt.finetune import FinetuneConfig, iter_finetune_data, smear_finetune_data
        from ..model.registry import get_model
        from ..pipeline import Stage, iter_analyze, run_reference

        r = self._get_result()
        if not r:
            raise InputError("classify a smear and correct some cells first")
        table = r["points"].features
        model, image, labels = r["model"], r["image"], r["labels"]
        data = smear_finetune_data(model, image, labels, table, reference=run_reference(r["summary"], table))
        out = self._target(r["image_layer"].name)
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} exists and is not empty; choose a new adapter folder")
        cfg = FinetuneConfig(rank=int(self.rank.value), steps=int(self.steps.value))
        corrections = {
            int(lab): str(c)
            for lab, c in zip(table["label"], table["corrected_class"].fillna("").astype(str), strict=True)
            if c.strip()
        }
        params = dict(r["params"])
        opts = {
            "speed": params.get("speed", "balanced"),
            "cells": params.get("cells", "stained"),
            "min_area": int(params.get("min_area", 0)),
            "size_check": bool(params.get("size_check", True)),
            "red_cell_px": params.get("red_cell_px"),
        }
        triage = r["summary"]["triage_thresholds"]

        def gen():
            adapter_dir = None
            for ev in iter_finetune_data(model, data, out, cfg, should_stop=self.should_stop):
                if ev.get("done"):
                    adapter_dir = ev["adapter_dir"]
                else:
                    yield (ev["step"], ev["total"], ev["stage"])
            adapted = get_model(adapter_dir, device="auto")
            result = None
            for item in iter_analyze(
                image,
                model=adapted,
                labels=labels.copy(),
                triage=triage,
                should_stop=self.should_stop,
                **opts,
            ):
                if isinstance(item, Stage):
                    yield (item.done, item.total, f"re-classify ({item.stage})")
                else:
                    result = item
            if params.get("red_cell_px_from") == "pooled" and result is not None:  # the same scale, same name
                result.parameters["red_cell_px_from"] = "pooled"
                result.summary["reference_diameter"] = dict(r["summary"]["reference_diameter"])
            return result, adapted, adapter_dir

        def done(value: tuple[Any, Any, str]) -> None:
            res, adapted, adapter_dir = value
            self._show_result(
                res, adapted, r["image_layer"], r["labels_layer"], image, corrections, r.get("image_path")
            )
            changed = int(
                np.sum(
                    res.table.set_index("label")["class"].reindex(table["label"]).to_numpy()
                    != table["class"].to_numpy()
                )
            )
            self.status.value = f"adapter {Path(adapter_dir).name}: {changed} cell(s) changed class"
            notify("info", f"fine-tuned adapter written to {adapter_dir}; {changed} cell(s) changed class")

        return gen, done
