"""Adapting to a new lab: LoRA adapters (real peft + diffusers), recalibration, agreement report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_cytodiffusion.cli.main import main

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapter(tiny_model, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / "lab2"
    rc = main(
        ["finetune", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out),
         "--shots", "4", "--steps", "6", "--rank", "4", "--calibration-cells", "4", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    return out


def test_finetune_writes_small_adapter_named_by_base_hash(adapter, tiny_model):
    from napari_cytodiffusion.adapt.adapter import read_adapter_metadata
    from napari_cytodiffusion.model.folder import read_metadata

    meta = read_adapter_metadata(adapter)
    assert meta["base_model"]["content_hash"] == read_metadata(tiny_model).content_hash
    assert meta["classes"] == ["redcell", "violet"]
    assert meta["finetune"]["class_counts"] == {"redcell": 4, "violet": 4}
    assert meta["validation"]["calibration_cells"] == 8
    assert meta["calibration"]["source"].startswith("recalibrated")
    assert sum(f.stat().st_size for f in adapter.iterdir()) < 5 * 2**20
    # its one-line summary (the widgets' model line, `napari-cytodiffusion models`)
    from napari_cytodiffusion.model.card import model_summary

    assert model_summary(adapter) == (
        "lab2: LoRA adapter of tiny · 2 classes · fine-tuned on 8 cells · recalibrated on 8 held-out cells"
    )
    # and its card (`models FOLDER`, the model line's tooltip) says it is one, with the base model's scope
    from napari_cytodiffusion.model.scope import model_about

    card = dict(model_about(adapter))
    assert card["adapted"].startswith("a LoRA adapter of tiny, fine-tuned on 8 labelled cells")
    assert card["classes"] == "2: redcell, violet"


def test_adapter_loads_merged_and_classifies(adapter, tiny_model, tiny_dataset):
    import torch

    from napari_cytodiffusion.classify.classifier import classify_crops
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model
    from napari_cytodiffusion.model.registry import get_model

    adapted = get_model(str(adapter))
    base = load_model(tiny_model)
    assert adapted.classes == base.classes
    assert adapted.short_id().startswith("lab2@")
    # merged weights differ from the base (LoRA B starts at zero, so 6 steps must have moved it)
    x = torch.zeros(2, 3, base.size, base.size)
    t = torch.tensor([500, 500])
    y = torch.tensor([0, 1])
    with torch.no_grad():
        assert not torch.allclose(
            adapted.unet(x, t, class_labels=y).sample, base.unet(x, t, class_labels=y).sample
        )
    paths = sorted((tiny_dataset / "violet").glob("*.png"))[:3]
    crops = single_cell_crops([read_image(p) for p in paths], adapted.metadata.preprocessing)
    res = classify_crops(adapted, crops, speed="fast")
    assert len(res) == 3 and np.isfinite(res.p_correct).all()


def test_adapter_on_wrong_or_missing_base_is_a_clear_error(adapter, tmp_path):
    from napari_cytodiffusion.adapt.adapter import ADAPTER_FILE, load_adapted_model
    from napari_cytodiffusion.errors import ModelError
    from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR

    with pytest.raises(ModelError, match="different model"):
        load_adapted_model(adapter, base=DEFAULT_MODEL_DIR)
    moved = tmp_path / "orphan"
    shutil.copytree(adapter, moved)
    meta = json.loads((moved / ADAPTER_FILE).read_text())
    meta["base_model"]["content_hash"] = "0" * 64
    (moved / ADAPTER_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not found"):
        load_adapted_model(moved)
    (moved / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupt"):
        load_adapted_model(moved)


def test_finetune_adds_a_new_class_only_when_asked(tiny_model, tiny_dataset, tmp_path, capsys):
    from PIL import Image

    from napari_cytodiffusion.model.registry import get_model

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "bluecell").mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        img = np.full((48, 48, 3), 230, np.uint8)
        img[14:34, 14:34] = np.clip(np.array([60, 90, 200]) + rng.normal(0, 8, (20, 20, 3)), 0, 255)
        Image.fromarray(img).save(data / "bluecell" / f"b{i}.png")
    args = ["finetune", "--model", str(tiny_model), "--data", str(data), "--shots", "3", "--steps", "3",
            "--rank", "2", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a1")]) == 2
    assert "unknown class" in capsys.readouterr().err
    assert not (tmp_path / "a1").exists()
    assert main([*args, "--out", str(tmp_path / "a2"), "--new-classes"]) == 0
    model = get_model(str(tmp_path / "a2"))
    assert model.classes == ["redcell", "violet", "bluecell"]
    assert model.unet.config.num_class_embeds == 4  # three classes + the null class
    assert len(model.metadata.colours) == 3


def test_finetune_bad_input_exit_2(tiny_model, tiny_dataset, tmp_path, capsys):
    assert main(["finetune", "--model", str(tiny_model), "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "data not found" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    assert main(["finetune", "--model", str(tiny_model), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "full")]) == 2  # fmt: skip
    assert "not an empty folder" in capsys.readouterr().err


def test_cancelled_finetune_writes_nothing(tiny_model, tiny_dataset, tmp_path):
    from napari_cytodiffusion.adapt.finetune import FinetuneConfig, iter_finetune, prepare_finetune_data
    from napari_cytodiffusion.errors import Cancelled
    from napari_cytodiffusion.model.folder import load_model

    model = load_model(tiny_model)
    data = prepare_finetune_data(model, tiny_dataset, shots=3)
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        for _ in iter_finetune(model, data.train_images, data.train_labels, data.classes, tmp_path / "a",
                               FinetuneConfig(steps=50, rank=2), should_stop=lambda: next(calls) >= 2):  # fmt: skip
            pass
    assert not (tmp_path / "a").exists()


def test_cohens_kappa_known_value():
    from napari_cytodiffusion.evaluate.agreement import cohens_kappa

    assert cohens_kappa(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert cohens_kappa(np.eye(3) * 7) == pytest.approx(1.0)


def test_agreement_report_cli(tmp_path):
    table = pd.DataFrame(
        {
            "label": range(1, 9),
            "class": ["lymphocyte", "lymphocyte", "neutrophil", "neutrophil", "monocyte", "monocyte", "ig", "ig"],
            "corrected_class": ["lymphocyte", "monocyte", "neutrophil", "neutrophil", "monocyte", "", "ig", "neutrophil"],
            "flagged": [False, True, False, False, False, True, False, True],
        }
    )  # fmt: skip
    table.to_csv(tmp_path / "cells.csv", index=False)
    assert main(["agreement", "--cells", str(tmp_path / "cells.csv"), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "agreement.json").read_text())
    assert rep["n"] == 7  # the row without a user label is left out
    assert rep["agreement"] == pytest.approx(5 / 7)
    assert rep["per_class"]["neutrophil"]["sensitivity"] == pytest.approx(2 / 3)
    assert rep["per_class"]["monocyte"]["specificity"] == pytest.approx(1.0)
    assert rep["flagged_share"] == pytest.approx(2 / 7)
    assert rep["agreement_flagged"] == pytest.approx(0.0)
    assert (tmp_path / "rep" / "agreement.png").stat().st_size > 1000
    assert main(["agreement", "--cells", str(tmp_path / "cells.csv"), "--user-column", "nope",
                 "--out", str(tmp_path / "rep2")]) == 2  # fmt: skip


def test_labelling_queue_puts_uncertain_and_abnormal_first():
    from napari_cytodiffusion.adapt.active import labelling_priority, labelling_queue

    table = pd.DataFrame(
        {
            "classified": [True, True, True, True, False, True],
            "p_correct": [0.99, 0.20, 0.98, 0.97, np.nan, 0.50],
            "anomaly": [0.1, 0.2, 9.0, 0.0, np.nan, 0.3],
            "corrected_class": ["", "", "", "", "", "monocyte"],
        }
    )
    queue = labelling_queue(table)
    assert set(queue[:2]) == {1, 2}  # most uncertain and most abnormal lead
    assert 4 not in queue and 5 not in queue  # unclassified and already labelled cells are skipped
    assert queue[-1] == 3 or queue[-1] == 0
    pri = labelling_priority(np.array([0.9, 0.1]), np.array([0.0, 0.0]))
    assert pri[1] == 1.0
