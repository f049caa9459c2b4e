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


def test_the_recipe_refuses_unknown_augmentation(tmp_path):
    """``train_default_model.py train --augment``: a key the augmentation does not have is one line, exit 2."""
    script = ROOT / "scripts" / "train_default_model.py"
    for value, said in (
        ('{"hue": 0.1}', "unknown keys ['hue']"),
        ("[1]", "give a JSON object"),
        ("{", "not JSON"),
    ):
        done = subprocess.run(
            [sys.executable, str(script), "train", "--cache", str(tmp_path / "none.npz"), "--out",
             str(tmp_path / "m"), "--augment", value],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 2 and said in done.stderr, done.stderr[-500:]
    assert not (tmp_path / "m").exists()


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
    assert entry["dataset"] == "tiny discs" and entry["confusion_matrix"] == metrics["confusion_matrix"]
    for key in ("flagged_share_of_wrong_calls", "flagged_share_of_right_calls"):
        assert entry[key] == metrics[key]  # a share of no calls is JSON null in both
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


def test_anomaly_steadiness_separates_the_cell_from_its_draw(tmp_path):
    """benchmarks/anomaly_steadiness.py on error dumps of known make-up: a draw against itself is fully steady,
    another draw less so; cells with errors unlike any class are found; the same draw twice is refused."""
    import importlib.util
    import json

    import numpy as np

    spec = importlib.util.spec_from_file_location("steady", ROOT / "benchmarks" / "anomaly_steadiness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    ts = np.array([150, 250, 350, 450, 550, 650, 750, 850])
    base, scale = np.exp(-ts / 250.0), 0.2 * np.exp(-ts / 250.0)
    classes = np.array(["a", "b", "c", "d"])

    def cells(
        n,
    ):  # each cell has its own lasting make-up: how well its class explains it, how far the others are
        labels = np.arange(n) % 4
        return labels, rng.normal(0, 0.15, n), rng.uniform(1.0, 3.0, (n, 4))

    def dump(path, made, noise_seed, odd=1.0):
        labels, own, gaps = made
        r = np.random.default_rng(noise_seed)
        n = len(labels)
        e = np.empty((n, 4, len(ts)))
        true = base[None, :] * odd * np.exp(own[:, None] + r.normal(0, 0.05, (n, len(ts))))
        for j in range(4):
            e[:, j] = true + scale[None, :] * (gaps[:, j : j + 1] + r.normal(0, 1.0, (n, len(ts))))
        e[np.arange(n), labels] = true
        np.savez(path, errors=e, labels=labels, cell_ids=np.arange(n), timesteps=ts, weights=np.ones(len(ts)),
                 scales=scale, drop_z=2.0, noise_seed=noise_seed, classes=classes)  # fmt: skip
        return path

    val = cells(160)
    cal = dump(tmp_path / "cal.npz", cells(400), 5)
    v0, v1 = dump(tmp_path / "v0.npz", val, 0), dump(tmp_path / "v1.npz", val, 1)
    ood = dump(tmp_path / "ood.npz", cells(80), 7, odd=2.0)
    again = dump(tmp_path / "again.npz", val, 0)
    args = ["--cal", str(cal), "--ood", str(ood), "--lambdas", "0", "1"]
    assert mod.main([*args, "--val", str(v0), str(v1), "--json", str(tmp_path / "s.json")]) == 0
    rows = json.loads((tmp_path / "s.json").read_text())
    for key in ("lambda 0, min units 2", "lambda 1, min units 2"):
        row = rows[key]
        assert 0.0 < row["corr"] < 0.99 and 0.0 <= row["both"] <= 1.0 and row["ood"] > 0.95
        assert 0.0 <= row["min"] <= row["left_out"] <= 1.0 and row["calls"] > 0
    assert rows["shipped"]["flag_same"] < 1.0
    same = mod.anomaly_figures(mod.load(cal), [mod.load(v0)] * 2, None, mod.engine_of(mod.load(cal)), 1.0)
    assert same["corr"] == pytest.approx(1.0) and same["same"] == 1.0
    with pytest.raises(SystemExit, match="same draw"):
        mod.main([*args, "--val", str(v0), str(again)])


def test_calibrate_presets_refits_balanced_on_the_null_label_and_keeps_the_presets(
    tiny_model, tiny_dataset, tmp_path
):
    """``calibrate_presets.py --speeds balanced --null balanced``: the block's own profile becomes the null
    label's gap (so the engine evaluates it), a preset fitted before keeps its constants and kind."""
    import shutil

    import numpy as np

    from napari_cytodiffusion.classify.anomaly import needs_null
    from napari_cytodiffusion.classify.classifier import engine_config
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model, read_metadata

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    m = load_model(model)
    ls = read_labelled(tiny_dataset)
    crops = single_cell_crops([read_image(p) for p in ls.paths], m.metadata.preprocessing)
    labels = np.array([m.classes.index(c) for c in ls.classes])
    cache = tmp_path / "cache.npz"
    np.savez(cache, cal_images=crops, cal_labels=labels, val_images=crops, val_labels=labels,
             classes=np.array(m.classes))  # fmt: skip

    def script(*args):
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "calibrate_presets.py"), "--model", str(model),
             "--cache", str(cache), "--backend", "torch", *args],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return read_metadata(model).calibration

    accurate = script("--speeds", "accurate")["presets"]["accurate"]
    assert not needs_null(accurate["anomaly"])
    cal = script("--speeds", "balanced", "--null", "balanced")
    assert needs_null(cal["anomaly"]) and cal["anomaly"]["gaps"] == "null"
    assert cal["presets"]["accurate"] == accurate
    fitted = read_metadata(model).validation["calibration_cells"]  # this fit's hold-out figures
    assert fitted["calibration_cells"] == len(labels) and fitted["speed"] == "balanced"
    assert fitted["calibration_accuracy"] == pytest.approx(cal["calibration_accuracy"])
    assert engine_config(load_model(model), "balanced").null
    assert not engine_config(load_model(model), "accurate").null
    # --null names a preset it does not refit: refused before any work
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "calibrate_presets.py"), "--model", str(model),
         "--cache", str(cache), "--backend", "torch", "--speeds", "fast", "--null", "balanced"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "--null balanced: not among --speeds" in bad.stderr


def test_anomaly_features_fits_a_fresh_variants_engine_and_scores_a_left_out_class(tiny_model, tmp_path):
    """benchmarks/anomaly_features.py on error dumps of known make-up: a model without engine settings gets
    them fitted on the calibration dump; cells that no class explains better than the null label, with label
    -1 in the test dump, and an out-of-distribution set are scored against the normal cells per gap kind."""
    import importlib.util
    import json

    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "anomaly_features", ROOT / "benchmarks" / "anomaly_features.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    ts = np.linspace(30, 930, 31).round().astype(int)
    base = np.exp(-ts / 250.0)
    scale, noise = 0.2 * base, 0.2 * base * (1 + 2 * (ts > 500))  # later timesteps noisier: less informative
    classes = np.array(["a", "b", "c", "d"])

    def dump(path, n, labels=None, left_out=False, null=True):
        labels = np.arange(n) % 4 if labels is None else labels
        true = base[None, :] * np.exp(rng.normal(0, 0.15, (n, 1)) + rng.normal(0, 0.05, (n, len(ts))))
        e = np.empty((n, 5, len(ts)))
        for j in range(4):
            e[:, j] = true + scale * rng.uniform(1.0, 3.0, (n, 1)) + noise * rng.normal(0, 1.0, (n, len(ts)))
        e[np.arange(n), labels % 4] = true
        gap = 0.05 if left_out else 1.5  # the null label explains a left-out cell as well as its best class
        e[:, 4] = true + scale * (gap + rng.normal(0, 0.3, (n, len(ts))))
        np.savez(path, errors=e if null else e[:, :4], labels=labels, cell_ids=np.arange(n), timesteps=ts,
                 weights=np.ones(len(ts)), scales=np.ones(len(ts)), drop_z=2.0, noise_seed=0,
                 classes=classes)  # fmt: skip
        return path

    cal = dump(tmp_path / "cal.npz", 400)
    val = dump(tmp_path / "val.npz", 200)
    left = dump(tmp_path / "left.npz", 60, labels=np.full(60, -1), left_out=True)
    ood = dump(tmp_path / "mpidb.npz", 50, labels=np.full(50, -1), left_out=True)
    out = tmp_path / "a.json"
    args = ["--model", str(tiny_model), "--calibration", str(cal), "--test", str(val), str(left)]
    assert mod.main([*args, "--ood", str(ood), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["engine_source"] == "fitted on the calibration dump" and len(res["engine"]["timesteps"]) == 24
    assert res["engine"]["drop_z"] in mod.DROP_Z and res["engine"]["timesteps"][0] < 500  # least noisy first
    rows = {(r["mode"], r["gaps"]): r for r in res["figures"]}
    kinds = ("runner_up", "classes", "null", "classes+null")
    assert set(rows) == {(m, g) for m in ("full", "adaptive") for g in kinds}
    for (_, gaps), r in rows.items():
        assert r["n_left_out"] == 60 and r["n_normal"] == 200 and r["normal_balanced_accuracy"] > 0.95
        assert r["left_out_class"]["n"] == 60 and r["mpidb"]["n"] == 50
        if "null" in gaps:  # what sets these cells apart is seen by the null gap
            assert r["left_out_class"]["anomaly_auroc"] > 0.95 and r["mpidb"]["anomaly_auroc"] > 0.95
    assert rows[("adaptive", "null")]["calls_per_cell"] < rows[("full", "null")]["calls_per_cell"]
    # without the null label in a dump, no null-gap rows; with nothing abnormal, a clear stop
    no_null = dump(tmp_path / "cal_without_null.npz", 400, null=False)
    assert mod.main(["--model", str(tiny_model), "--calibration", str(no_null), "--test", str(val), str(left),
                     "--out", str(out)]) == 0  # fmt: skip
    assert {r["gaps"] for r in json.loads(out.read_text())["figures"]} == {"runner_up", "classes"}
    val_no_null = dump(tmp_path / "val_without_null.npz", 200, null=False)  # the other way round: the same
    assert mod.main(["--model", str(tiny_model), "--calibration", str(cal), "--test", str(val_no_null),
                     str(left), "--out", str(out)]) == 0  # fmt: skip
    assert {r["gaps"] for r in json.loads(out.read_text())["figures"]} == {"runner_up", "classes"}
    with pytest.raises(SystemExit, match="nothing abnormal"):
        mod.main(["--model", str(tiny_model), "--calibration", str(cal), "--test", str(val)])


def test_error_readout_learns_what_lowest_error_misses(tmp_path):
    """benchmarks/error_readout.py on dumps of known make-up: one class is explained worse than the others by
    every label (a bias larger than its own advantage), so "lowest error wins" never calls it; a learnt
    read-out of the errors recovers it, in cross-validation and on a second dump, on the full grid and on
    what the shipped engine's adaptive run leaves (replayed)."""
    import importlib.util
    import json

    import numpy as np

    from napari_cytodiffusion.model.folder import read_metadata
    from napari_cytodiffusion.model.registry import resolve_model

    spec = importlib.util.spec_from_file_location("error_readout", ROOT / "benchmarks" / "error_readout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    meta = read_metadata(resolve_model(None))
    ts = np.array(meta.calibration["engine"]["timesteps"])  # in the engine's order, as full_grid_errors.py
    n_classes = meta.n_classes

    def dump(path, seed):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(n_classes), 40)
        errors = 1 + 0.03 * rng.standard_normal((len(labels), n_classes + 1, len(ts)))  # + the null label
        errors[np.arange(len(labels)), labels] -= 0.1  # the true class explains the cell best ...
        errors[:, n_classes - 1] += 0.2  # ... except that the last class is explained worse, always
        np.savez(path, errors=errors, labels=labels, timesteps=ts, weights=np.ones(len(ts)),
                 scales=np.full(len(ts), 0.03), classes=np.array(meta.classes))  # fmt: skip
        return path

    cal, test = dump(tmp_path / "cal.npz", 0), dump(tmp_path / "test.npz", 1)
    out = tmp_path / "readout.json"
    argv = ["--calibration", str(cal), "--test", str(test), "--c", "1", "--speeds", "balanced"]
    assert mod.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rule"]["test"] == pytest.approx(1 - 1 / n_classes)  # the last class is never called
    assert {r["kind"] for r in res["readouts"]} == {"weighted", "bands", "bands+null"}
    (engine,) = res["engine"]
    assert engine["speed"] == "balanced" and engine["rule"]["test"] == pytest.approx(1 - 1 / n_classes)
    assert engine["calls_per_cell"]["test"] < n_classes * len(ts)  # the paired test dropped classes
    for row in [*res["readouts"], *engine["readouts"]]:
        assert row["cv"] > 0.95 and row["test"] > 0.95, row
    np.savez(tmp_path / "other.npz", **{**np.load(test), "timesteps": ts + 1})
    with pytest.raises(SystemExit, match="other classes or timesteps"):
        mod.main(["--calibration", str(cal), "--test", str(tmp_path / "other.npz")])
