"""The benchmark and recipe scripts still start: each one's ``--help`` runs (imports, argument parser).

They are run by hand (``benchmarks/README.md``, the recipes under ``scripts/``), so a change of the
package could break one unseen; this catches what breaks a script before its work starts: a module-level
import of something moved or removed, or a broken argument parser.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_help_runs(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_record_validation_stores_an_evaluate_run(tiny_model, tiny_dataset, tmp_path):
    """An evaluate run's figures become the model's validation record, in the place its speed and backend name."""
    import json
    import shutil

    from napari_cytodiffusion.cli.main import main
    from napari_cytodiffusion.model.folder import load_model, read_metadata

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    run = tmp_path / "run"
    assert main(["evaluate", "--data", str(tiny_dataset), "--model", str(model), "--speed", "fast",
                 "--out", str(run)]) == 0  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "record_validation.py"), "--model", str(model),
         "--metrics", str(run / "metrics.json"), "--dataset", "tiny discs", "--note", "a test", "--n", "24"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    backend = "int8" if metrics["backend"] == "onnx-int8" else "torch"
    entry = read_metadata(model).validation["presets"]["fast"][backend]
    assert entry["balanced_accuracy"] == metrics["balanced_accuracy"] and entry["n"] == 24
    assert entry["dataset"] == "tiny discs" and "confusion_matrix" not in entry
    assert load_model(model).verified  # the weights' hash still holds
    # a run of fewer cells than the split is refused, and the folder is left as it was
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "record_validation.py"), "--model", str(model),
         "--metrics", str(run / "metrics.json"), "--dataset", "x", "--note", "x", "--n", "25"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode != 0 and "not the split's 25" in again.stderr
    assert read_metadata(model).validation["presets"]["fast"][backend]["dataset"] == "tiny discs"


def test_seed_stability_compares_two_draws_of_the_same_cells(tiny_model, tiny_dataset, tmp_path):
    """benchmarks/seed_stability.py on two evaluate runs: a run against itself agrees fully; another seed's
    figures match its own metrics."""
    import importlib.util
    import json

    import pandas as pd

    from napari_cytodiffusion.cli.main import main

    for seed in (0, 1):
        assert main(["evaluate", "--data", str(tiny_dataset), "--model", str(tiny_model), "--speed", "fast",
                     "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0  # fmt: skip
    spec = importlib.util.spec_from_file_location("seed_stability", ROOT / "benchmarks" / "seed_stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = (pd.read_csv(tmp_path / f"s{s}" / "predictions.csv") for s in (0, 1))
    same = mod.compare(a, a)
    assert same["same_call"] == 1.0 and same["same_flag"] == 1.0 and same["right_in_one_only"] == 0
    assert same["anomaly_abs_difference"]["max"] == 0.0
    two = mod.compare(a, b)
    accuracy = [json.loads((tmp_path / f"s{s}" / "metrics.json").read_text())["accuracy"] for s in (0, 1)]
    assert two["n"] == 24 and two["accuracy"] == pytest.approx(accuracy)
    assert two["right_in_both"] + two["right_in_one_only"] + two["wrong_in_both"] == 24
    with pytest.raises(SystemExit):
        mod.compare(a, b.iloc[::-1].reset_index(drop=True))  # not the same cells in the same order
