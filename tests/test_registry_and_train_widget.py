import hashlib
import shutil
import zipfile

import pytest

from napari_cytodiffusion.errors import ModelError
from napari_cytodiffusion.model import registry


def test_cache_dir_env_and_official_download(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in tiny_model.rglob("*"):
            if f.is_file() and "checkpoints" not in f.parts:
                zf.write(f, f.relative_to(tiny_model))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(registry.OFFICIAL_MODELS, "tiny-official", {"url": archive.as_uri(), "sha256": sha})
    # what must never touch the network (a widget describing the choice) does not download it
    from napari_cytodiffusion.model.card import model_classes

    with pytest.raises(ModelError, match="not downloaded yet"):
        model_classes("tiny-official")
    assert not (tmp_path / "cache" / "models" / "tiny-official").exists()
    path = registry.resolve_model("tiny-official")
    assert path == tmp_path / "cache" / "models" / "tiny-official"
    assert registry.get_model("tiny-official").classes == ["redcell", "violet"]
    assert model_classes("tiny-official") == ["redcell", "violet"]  # cached now
    assert "tiny-official" in registry.available_models()
    # corrupt download → clear error, nothing left in the cache
    monkeypatch.setitem(registry.OFFICIAL_MODELS, "bad", {"url": archive.as_uri(), "sha256": "0" * 64})
    with pytest.raises(ModelError, match="corrupt"):
        registry.resolve_model("bad")
    monkeypatch.setitem(
        registry.OFFICIAL_MODELS, "offline", {"url": "http://127.0.0.1:9/none.zip", "sha256": sha}
    )
    with pytest.raises(ModelError, match="offline"):
        registry.resolve_model("offline")
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["tiny-official"]
    with pytest.raises(ModelError, match="unknown model"):
        registry.resolve_model("no-such-model")
    shutil.rmtree(tmp_path / "cache")


def test_bundled_models_are_found_by_name_and_never_shadowed(tiny_model, tmp_path, monkeypatch):
    from napari_cytodiffusion.paths import DEFAULT_MODEL_DIR

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    bundled = registry.bundled_models()
    assert next(iter(bundled)) == "default" and bundled["default"] == DEFAULT_MODEL_DIR
    assert DEFAULT_MODEL_DIR not in list(bundled.values())[1:]  # listed once
    assert "cellpose_smear" not in bundled  # not a classifier model
    # the default's folder name resolves to it; a cached folder of that name does not replace it
    shutil.copytree(tiny_model, tmp_path / "cache" / "models" / "pbc32")
    shutil.copytree(tiny_model, tmp_path / "cache" / "models" / "mine")
    assert registry.resolve_model("pbc32") == DEFAULT_MODEL_DIR
    assert "pbc32" not in registry.available_models()
    assert registry.available_models()["mine"] == tmp_path / "cache" / "models" / "mine"
    for name, path in bundled.items():
        assert registry.resolve_model(name) == path


def test_model_summary_and_models_command(tiny_model, tmp_path, monkeypatch, capsys):
    import json

    from napari_cytodiffusion.cli.main import main
    from napari_cytodiffusion.model.card import model_summary, parameter_count
    from napari_cytodiffusion.model.folder import read_metadata, write_metadata

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    default = model_summary("default")
    assert default.startswith("pbc32: 8 classes · 2.74 M parameters")
    assert "trained on PBC (CC BY 4.0)" in default and "balanced accuracy 0.95" in default
    # the count from the weights file's header equals the network's own
    mine = tmp_path / "cache" / "models" / "mine"
    shutil.copytree(tiny_model, mine)
    import torch  # noqa: F401  (the network is built only to count its parameters)

    from napari_cytodiffusion.model.folder import load_model

    n = sum(p.numel() for p in load_model(mine, device="cpu").unet.parameters())
    assert parameter_count(mine / "unet" / "diffusion_pytorch_model.safetensors") == n
    assert model_summary("mine").endswith("not validated")
    meta = read_metadata(mine)
    meta.validation = {"dataset": "Lab X (2026)", "n": 1234, "balanced_accuracy": 0.81234}
    write_metadata(mine, meta)
    assert model_summary(mine).endswith("· Lab X: balanced accuracy 0.812, 1,234 cells")
    with pytest.raises(ModelError, match="not found"):
        model_summary(tmp_path / "nothing")
    # the CLI lists every model usable offline, a broken cached folder with what is wrong
    (tmp_path / "cache" / "models" / "broken").mkdir()
    (tmp_path / "cache" / "models" / "broken" / "cytodiffusion.json").write_text("{")
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert next(iter(rows)) == "default" and rows["default"]["summary"] == default
    assert rows["mine"]["summary"] == model_summary(mine)
    assert rows["broken"]["summary"].startswith("cannot use:")
    assert main(["models"]) == 0
    assert "mine\t" in capsys.readouterr().out


def test_a_models_card_says_what_it_is_for_never_learnt_and_was_measured_to_miss(
    tiny_model, tmp_path, monkeypatch, capsys
):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from napari_cytodiffusion.cli.main import main
    from napari_cytodiffusion.model.folder import read_metadata, write_metadata
    from napari_cytodiffusion.model.scope import DEFAULT_USE, OTHER_CELLS, about_model, model_about

    monkeypatch.setenv("NAPARI_CYTODIFFUSION_CACHE", str(tmp_path / "cache"))
    # the shipped models carry the scope their recipe script writes, figures and all
    script = Path(__file__).resolve().parents[1] / "scripts" / "write_model_scope.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    card = dict(model_about("default"))  # every heading but "limit" once
    assert card["intended use"].startswith("research and teaching, not a diagnostic")
    assert "Hospital Clinic of Barcelona" in card["learnt from"] and "CC BY 4.0" in card["learnt from"]
    assert card["classes"].startswith("8: basophil, eosinophil, erythroblast (nucleated red cells), ig (")
    assert card["other cells"] == OTHER_CELLS and "blasts" in card["not learnt"]
    recall = read_metadata(registry.resolve_model("default")).validation["per_class_recall"]
    weakest = min(recall, key=recall.get)
    assert f"recall per class, weakest first: {weakest} {recall[weakest]:.3f}," in card["measured"]
    limits = [t for h, t in model_about("default") if h == "limit"]
    assert len(limits) == 5 and any("AUROC 0.856" in t for t in limits)
    assert any("12 of 94 metamyelocytes were called neutrophil" in t for t in limits)
    assert any("not measured for this distilled model" in t for h, t in model_about("pbc32-fast"))

    # a model of one's own says what every model can: its classes, data and record; nothing invented
    mine = tmp_path / "mine"
    shutil.copytree(tiny_model, mine)
    plain = dict(model_about(mine))
    assert plain["intended use"] == DEFAULT_USE and "not learnt" not in plain and "limit" not in plain
    assert plain["classes"] == "2: redcell, violet"
    assert plain["measured"] == "no validation record in the model's metadata"
    # ... and what whoever trained it wrote; parts of the wrong type are left out, not fatal
    meta = read_metadata(mine)
    meta.extra["scope"] = {
        "intended_use": "teaching only",
        "class_notes": {"violet": "white cells"},
        "not_learnt": ["platelets", "Violets"],  # a kind it has learnt since is left out
        "limits": [3, "stain: Wright only", {"x": 1}],
    }
    meta.validation = {"dataset": "Lab X (2026)", "n": 20, "balanced_accuracy": 0.9, "per_class_recall": {
        "redcell": 1.0, "violet": 0.8}, "confusion_matrix": [[10, 0], [2, 8]],
        "flagged_share_of_wrong_calls": 0.5, "flagged_share_of_right_calls": 0.0556}  # fmt: skip
    write_metadata(mine, meta)
    items = about_model(read_metadata(mine))
    assert items[0] == ("intended use", "teaching only")
    assert ("classes", "2: redcell, violet (white cells)") in items and ("not learnt", "platelets") in items
    assert ("measured", "Lab X (20 cells): balanced accuracy 0.900; recall per class, weakest first: violet "
            "0.800, redcell 1.000; flagged: 50 % of the wrong calls, 6 % of the right ones; most frequent confusions: "
            "violet called redcell 20.0 %") in items  # fmt: skip
    assert [t for h, t in items if h == "limit"] == ["3", "stain: Wright only"]
    # a malformed record leaves out what it cannot read, never fails
    meta.validation = {"balanced_accuracy": 0.9, "n": "many", "per_class_recall": {"violet": "x", "redcell": 1},
                       "confusion_matrix": [[1, "a"], [2, 3]], "flagged_share_of_wrong_calls": None}  # fmt: skip
    assert dict(about_model(meta))["measured"] == (
        "validation: balanced accuracy 0.900; recall per class, weakest first: redcell 1.000"
    )
    meta.validation = {"balanced_accuracy": "high"}
    assert dict(about_model(meta))["measured"] == "no validation record in the model's metadata"

    # on the command line: one model's card; a name that is no model is one line and exit code 2
    assert main(["models", str(mine)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny: 2 classes") and "intended use: teaching only" in out
    assert main(["models", "pbc32-fast", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["pbc32-fast"]
    assert row["about"][0] == {
        "heading": "intended use",
        "text": dict(model_about("pbc32-fast"))["intended use"],
    }
    assert main(["models", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'no-such-model'" in err[0]


def test_train_widget_trains_and_cancels(make_napari_viewer, qtbot, tiny_dataset, tmp_path):
    from napari_cytodiffusion.model.folder import read_metadata
    from napari_cytodiffusion.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    # the data field's button picks a folder of class sub-folders, or a CSV file when told so
    assert w.data.mode.value == "d" and w.data.choose_btn.text == "Choose directory"
    w.data_kind.value = "CSV file"
    assert w.data.mode.value == "r" and w.data.filter == "*.csv"
    w.data_kind.value = "folder of class sub-folders"
    assert w.data.mode.value == "d" and w.data.filter is None
    w.data.value = str(tiny_dataset)
    w.out.value = str(tmp_path / "m")
    w.arch.value = "tiny"
    w.steps.value = 12
    w.batch_size.value = 4
    w.resume.value = False
    w.run_button.clicked()
    qtbot.waitUntil(lambda: w.run_button.enabled and w.worker is not None, timeout=120_000)
    assert read_metadata(tmp_path / "m").training["steps_done"] == 12
    # cancel a longer run: a checkpoint is kept so it can be resumed
    w.out.value = str(tmp_path / "m2")
    w.steps.value = 100_000
    w.run_button.clicked()
    qtbot.waitUntil(lambda: w.progress.value >= 10, timeout=120_000)
    qtbot.waitUntil(
        lambda: " h " in w.status.value, timeout=60_000
    )  # "loss … — step: 25/100000 · about 1 h 05 min left"
    assert w.status.value.endswith(" min left")
    w.cancel()
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=120_000)
    assert (tmp_path / "m2" / "checkpoints" / "last.pt").is_file()


def test_time_left_is_said_once_the_pace_is_known():
    from napari_cytodiffusion.widgets._runner import time_left

    assert time_left(0, 30, 100) == "" and time_left(10, 2, 100) == ""  # no pace yet
    assert time_left(10, 60, 0) == ""  # nothing left
    assert time_left(10, 10, 3) == "under a minute left"
    assert time_left(10, 60, 120) == "about 12 min left"
    assert time_left(100, 60, 20_000) == "about 3 h 20 min left"
