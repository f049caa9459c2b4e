import json

import numpy as np
import pytest

from napari_cytodiffusion.classify.calibration import ece, fit_temperature, softmax_neg
from napari_cytodiffusion.classify.classifier import classify_crops, engine_config
from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.evaluate.metrics import auroc, sensitivity_at_specificity
from napari_cytodiffusion.model.registry import bundled_models, get_model


def _pbc_subset(shared_data, per_class=2):
    import pandas as pd

    df = pd.read_csv(shared_data / "pbc" / "labels.csv")
    df = df[df.split == "val"].groupby("class").head(per_class)
    return df


@pytest.mark.parametrize("name", list(bundled_models()))
def test_bundled_models_classify_real_pbc_cells(shared_data, name):
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image

    df = _pbc_subset(shared_data, 2)
    model = get_model(name)
    crops = single_cell_crops(
        [read_image(shared_data / "pbc" / p) for p in df.path], model.metadata.preprocessing
    )
    res = classify_crops(model, crops, speed="balanced", seed=0)
    truth = np.array([model.class_index(c) for c in df["class"]])
    assert (res.pred == truth).mean() >= 0.75
    assert np.allclose(res.probs.sum(axis=1), 1)
    assert ((res.p_correct >= 0) & (res.p_correct <= 1)).all()
    # deterministic for a seed; the adaptive engine spends fewer UNet calls than the full grid
    again = classify_crops(model, crops[:4], speed="balanced", seed=0)
    assert np.array_equal(again.pred, res.pred[:4]) and np.allclose(
        again.probs, res.probs[:4], atol=1e-4
    )  # batch composition changes float rounding only
    # a cell's noise is its own (seeded by its pixels): at another place in a run it gets the same numbers
    moved = classify_crops(model, crops[[5, 2]], speed="balanced", seed=0)
    assert np.array_equal(moved.pred, res.pred[[5, 2]])
    assert np.array_equal(moved.unet_calls, res.unet_calls[[5, 2]])
    assert np.allclose(moved.probs, res.probs[[5, 2]], atol=1e-4)
    assert np.allclose(moved.p_correct, res.p_correct[[5, 2]], atol=1e-4)
    full = classify_crops(model, crops[:4], speed="full", seed=0)
    assert full.unet_calls.mean() > again.unet_calls.mean()
    # every class (and the null label, where the anomaly profile that runs uses its gap) at every timestep
    n_labels = 8 + engine_config(model, "full").null
    assert full.unet_calls[0] == len(model.metadata.calibration["engine"]["timesteps"]) * n_labels
    # a bundled model carries constants fitted for the other speed presets, for both networks
    assert {"fast", "accurate"} <= set(model.metadata.calibration["presets"])
    int8 = model.metadata.extra["int8"]["classifier_calibration"]
    assert {"fast", "accurate"} <= set(int8["presets"])


def test_decided_cells_spend_units_only_on_the_anomaly_profile():
    """A cell with one class left evaluates it only where a noise band is still short of units."""
    from napari_cytodiffusion.classify.anomaly import band_index
    from napari_cytodiffusion.classify.engine import _round_items

    band = band_index([550, 450, 350, 250, 750, 560, 260, 760])
    assert band.tolist() == [2, 1, 1, 0, 3, 2, 0, 3]
    errors = np.full((2, 3, 8), np.nan)
    errors[:, :, :2] = 1.0  # two units done, every class
    active = np.array([[True, True, False], [False, True, False]])  # cell 1 is decided
    # the undecided cell evaluates both its classes at every unit of the round
    items = _round_items(active, [2, 3, 4, 5], errors, band, band_units=1)
    assert [(c, k) for c, k, _ in items].count((0, 0)) == 4 and [c for c, _, _ in items].count(0) == 8
    # the decided one: one unit for each band it has not seen (350 → band 1 already seen at 450)
    assert [u for c, _, u in items if c == 1] == [3, 4]
    assert [u for c, _, u in _round_items(active, [2, 3, 4, 5], errors, band, 2) if c == 1] == [2, 3, 4, 5]
    # off: every unit, as before
    assert len(_round_items(active, [2, 3, 4, 5], errors, band, None)) == 12
    # decided_views: a decided cell skips the units of later test-time views (units 4, 5 here)
    view = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    items = _round_items(active, [2, 3, 4, 5], errors, band, None, view, 1)
    assert [u for c, _, u in items if c == 1] == [2, 3] and [c for c, _, _ in items].count(0) == 8
    # both rules: first-view units that bring a band closer (350 → band 1 is already covered)
    assert [u for c, _, u in _round_items(active, [2, 3, 4, 5], errors, band, 1, view, 1) if c == 1] == [3]


def test_decided_band_units_keeps_every_call_and_probability(shared_data):
    """Stopping a decided cell's extra units changes its calls and anomaly profile, not its call."""
    from napari_cytodiffusion.classify.anomaly import band_index
    from napari_cytodiffusion.classify.classifier import engine_config
    from napari_cytodiffusion.classify.engine import class_evidence, diffusion_errors
    from napari_cytodiffusion.crops import single_cell_crops, to_model_tensor
    from napari_cytodiffusion.io.images import read_image

    df = _pbc_subset(shared_data, 2)
    model = get_model("default")
    x0 = to_model_tensor(
        single_cell_crops(
            [read_image(shared_data / "pbc" / p) for p in df.path], model.metadata.preprocessing
        )
    )
    unet, ac = model.inference_unet(), model.alphas_cumprod()
    runs = {}
    for speed in ("balanced", "accurate"):
        for k in (None, 1):
            cfg = engine_config(model, speed)
            cfg.decided_band_units = k  # set directly: an override of None would be ignored
            runs[speed, k] = diffusion_errors(unet, ac, x0, model.metadata.n_classes, cfg)
        old, new = runs[speed, None], runs[speed, 1]
        assert np.array_equal(old.active, new.active)
        (w_old, d_old), (w_new, d_new) = class_evidence(old), class_evidence(new)
        assert np.array_equal(w_old, w_new) and np.allclose(d_old, d_new)
        # the same noise for every evaluated unit: the new errors are a subset of the old ones
        seen = np.isfinite(new.errors)
        assert (np.isfinite(old.errors) | ~seen).all()
        assert np.allclose(new.errors[seen], old.errors[seen], rtol=1e-4)
        assert (new.calls <= old.calls).all() and new.calls.sum() < old.calls.sum()
        # every band the units reach still has the winner evaluated at least once
        band = band_index(new.unit_timesteps)
        for i, w in enumerate(w_new):
            assert set(band[seen[i, w]]) == set(band)
    # the rotated view of ``accurate`` is where most of the saving is
    saved = {s: 1 - runs[s, 1].calls.mean() / runs[s, None].calls.mean() for s in ("balanced", "accurate")}
    assert saved["accurate"] > saved["balanced"] > 0
    # decided_views: a decided cell keeps every unit of the first view and skips the rotated one
    cfg = engine_config(model, "accurate", decided_views=1)
    first = diffusion_errors(unet, ac, x0, model.metadata.n_classes, cfg)
    old = runs["accurate", None]
    assert np.array_equal(first.active, old.active)
    assert np.array_equal(class_evidence(first)[0], class_evidence(old)[0])
    seen, k = np.isfinite(first.errors), len(cfg.timesteps)
    assert np.allclose(first.errors[seen], old.errors[seen], rtol=1e-4)
    assert (first.calls <= old.calls).all() and first.calls.sum() < old.calls.sum()
    for i, w in enumerate(class_evidence(first)[0]):
        assert seen[i, w, :k].all()


def test_evaluate_cli_writes_metrics(shared_data, tmp_path):
    df = _pbc_subset(shared_data, 1)
    csv = tmp_path / "cells.csv"
    df.assign(path=[str(shared_data / "pbc" / p) for p in df.path])[["path", "class"]].to_csv(
        csv, index=False
    )
    ood = tmp_path / "ood"
    ood.mkdir()
    import shutil

    for f in sorted((shared_data / "mpidb_falciparum" / "crops" / "r").glob("*.png"))[:3]:
        shutil.copy(f, ood / f.name)
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--data", str(csv), "--ood", str(ood), "--out", str(out), "--speed", "fast"]) == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "ece",
        "n",
        "unet_calls_per_cell",
        "cells_per_second",
        "selective_accuracy_at_p_correct_0.95",
        "anomaly_auroc",
        "sensitivity_at_specificity_0.96",
    ):
        assert key in m
    assert m["n"] == 8
    import pandas as pd

    cells = pd.read_csv(out / "predictions.csv")  # which cells were wrong, and how sure it was of them
    assert len(cells) == 8 and {"path", "true_class", "correct", "class", "p_correct", "anomaly"} <= set(
        cells
    )
    assert cells["correct"].mean() == pytest.approx(m["accuracy"])
    assert (cells["correct"] == (cells["class"] == cells["true_class"])).all()
    # how many wrong calls the flag catches, and how many right ones it costs a reviewer
    for key, which in (("flagged_share_of_wrong_calls", False), ("flagged_share_of_right_calls", True)):
        these = cells[cells["correct"] == which]["flagged"]
        assert m[key] == (pytest.approx(these.mean()) if len(these) else None)  # none: NaN, JSON null
    assert len(pd.read_csv(out / "ood_predictions.csv")) == 3
    # the default model ships an int8 UNet, which the default backend runs when ONNX Runtime is there
    # and this CPU computes it as the machine that fitted its int8 constants did (else float32 ONNX)
    from napari_cytodiffusion.model import int8_numerics
    from napari_cytodiffusion.model.onnx_backend import OrtUNet, backend_choice, onnx_available
    from napari_cytodiffusion.model.quantize import int8_file

    if backend_choice() == "auto" and not onnx_available():
        assert m["backend"] == "torch"
    elif backend_choice() == "auto":
        model = get_model("default")
        stored = model.metadata.extra["int8"]["numerics"]
        alike = int8_numerics.matches(stored, OrtUNet(int8_file(model)), model.size, model.metadata.n_classes)
        assert m["backend"] == ("onnx-int8" if alike else "onnx")
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "reliability_diagram.png").stat().st_size > 1000


def test_tiny_model_separates_two_colours(tiny_model, tiny_dataset):
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model

    model = load_model(tiny_model)
    ls = read_labelled(tiny_dataset)
    crops = single_cell_crops([read_image(p) for p in ls.paths], model.metadata.preprocessing)
    res = classify_crops(model, crops, speed="full", timesteps=[100, 300, 500])
    assert res.probs.shape == (24, 2)
    assert res.unet_calls[0] == 6


def test_later_units_alone_match_a_whole_full_grid(tiny_model, tiny_dataset):
    """``first_unit`` evaluates only the later units, with the same noise and errors as a whole run."""
    from napari_cytodiffusion.classify.engine import EngineConfig, diffusion_errors
    from napari_cytodiffusion.crops import single_cell_crops, to_model_tensor
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model

    model = load_model(tiny_model)
    ls = read_labelled(tiny_dataset)
    x0 = to_model_tensor(
        single_cell_crops([read_image(p) for p in ls.paths[:3]], model.metadata.preprocessing)
    )
    cfg = EngineConfig(timesteps=[100, 400], adaptive=False, tta=2)
    args = (model.unet, model.alphas_cumprod(), x0, model.metadata.n_classes, cfg)
    whole = diffusion_errors(*args, cell_ids=np.array([5, 6, 7]))
    later = diffusion_errors(*args, cell_ids=np.array([5, 6, 7]), first_unit=2)
    assert np.isnan(later.errors[:, :, :2]).all()
    assert np.allclose(later.errors[:, :, 2:], whole.errors[:, :, 2:], rtol=1e-5)
    assert (later.calls == whole.calls // 2).all()
    with pytest.raises(ValueError, match="full-grid"):
        diffusion_errors(*args[:4], EngineConfig(timesteps=[100, 400], tta=2), first_unit=2)


def test_unit_noise_is_the_cells_own_and_a_prefix_draw():
    """A cell's noise depends on its id and seed only, and fewer units draw the first ones."""
    import torch

    from napari_cytodiffusion.classify.engine import unit_noise

    a = unit_noise(np.array([3, 9]), 5, 8, seed=1)
    assert a.shape == (2, 5, 3, 8, 8)
    assert torch.equal(unit_noise(np.array([9]), 5, 8, seed=1)[0], a[1])  # not the batch's
    assert torch.equal(unit_noise(np.array([3, 9]), 2, 8, seed=1), a[:, :2])
    assert not torch.equal(unit_noise(np.array([3]), 5, 8, seed=2)[0], a[0])


def test_crop_ids_are_the_pixels_own():
    """A crop's noise id is a hash of its pixels: equal crops share it, one changed pixel does not."""
    from napari_cytodiffusion.classify.engine import crop_ids

    crops = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    crops[2] = crops[0]
    ids = crop_ids(crops)
    assert ids.dtype == np.int64 and (ids >= 0).all() and ids.max() < 2**48
    assert ids[0] == ids[2] != ids[1]
    assert crop_ids(crops[::-1]).tolist() == ids[::-1].tolist()
    changed = crops[:1].copy()
    changed[0, 4, 4, 1] ^= 1
    assert crop_ids(changed)[0] != ids[0]


def test_speed_presets_use_their_own_calibration(tiny_model, tiny_dataset):
    """A preset with constants fitted on its own errors uses them; the others use the main block."""
    from napari_cytodiffusion.classify.calibration import softmax_neg
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model

    model = load_model(tiny_model)
    ls = read_labelled(tiny_dataset)
    crops = single_cell_crops([read_image(p) for p in ls.paths[:4]], model.metadata.preprocessing)
    cal = dict(model.metadata.calibration or {})
    model.metadata.calibration = cal | {"temperature": 1.0, "presets": {"full": {"temperature": 0.01}}}
    full = classify_crops(model, crops, speed="full", timesteps=[100, 300])
    assert np.allclose(full.probs, softmax_neg(full.evidence, 0.01))
    fast = classify_crops(model, crops, speed="fast", timesteps=[100, 300])
    assert np.allclose(fast.probs, softmax_neg(fast.evidence, 1.0))


def test_calibration_helpers():
    # labels drawn from softmax(-evidence / 0.7): the fitted temperature must recover 0.7
    rng = np.random.default_rng(0)
    evidence = rng.gamma(1.5, 1.0, (4000, 4))
    p_true = softmax_neg(evidence, 0.7)
    labels = np.array([rng.choice(4, p=p) for p in p_true])
    t = fit_temperature(evidence, labels)
    assert t == pytest.approx(0.7, rel=0.15)
    p = softmax_neg(evidence, t)
    assert ece(p.max(1), p.argmax(1) == labels) < 0.03
    assert auroc(np.zeros(10), np.ones(10)) == 1.0
    assert auroc(np.arange(10), np.arange(10)) == pytest.approx(0.5)
    assert sensitivity_at_specificity(np.arange(100), np.array([200, 50])) == 0.5


def test_profile_anomaly_is_two_sided_and_handles_partial_units():
    """Cells explained unusually well *or* badly by their class score high; missing bands are marginalised."""
    from napari_cytodiffusion.classify.calibration import fit_calibration, score_anomaly
    from napari_cytodiffusion.classify.engine import ErrorResult, class_evidence

    rng = np.random.default_rng(1)
    ts = np.array([150, 250, 350, 450, 550, 650, 750, 850])
    base = np.exp(-ts / 250.0)  # errors fall with the timestep, as in a real model

    def make(n, scale):
        labels = rng.integers(0, 3, n)
        e = base[None, None, :] * np.exp(rng.normal(0, 0.1, (n, 3, len(ts)))) * 1.3
        e[np.arange(n), labels] = base * scale[:, None] * np.exp(rng.normal(0, 0.1, (n, len(ts))))
        res = ErrorResult(e, np.ones((n, 3), bool), np.full(n, 24), ts, np.ones(len(ts)), 0.3 * base)
        return res, labels

    cal, y = make(600, np.ones(600))
    c = fit_calibration(cal, y, 3)
    assert c["anomaly"]["method"] == "profile"
    normal, _ = make(200, np.ones(200))
    easy, _ = make(50, np.full(50, 0.6))  # "too simple": lower error than any calibration cell
    hard, _ = make(50, np.full(50, 1.6))

    def scores(res):
        w, ev = class_evidence(res)
        return score_anomaly(res, w, ev, c["anomaly"])

    s_norm = scores(normal)
    assert auroc(s_norm, scores(easy)) > 0.95
    assert auroc(s_norm, scores(hard)) > 0.95
    # a run that evaluated only the first half of the units still gives finite, comparable scores
    half = ErrorResult(
        normal.errors.copy(), normal.active, normal.calls, ts, normal.unit_weights, normal.unit_scales
    )
    half.errors[:, :, 4:] = np.nan
    s_half = scores(half)
    assert np.isfinite(s_half).all() and abs(np.median(s_half) - np.median(s_norm)) < 0.5


def test_profile_fits_a_preset_that_never_reaches_some_noise_bands():
    """``fast`` sees only middle timesteps: the outer bands are left out of the profile, not fatal."""
    from napari_cytodiffusion.classify.calibration import fit_calibration, score_anomaly
    from napari_cytodiffusion.classify.engine import ErrorResult, class_evidence

    rng = np.random.default_rng(2)
    ts = np.array([320, 380, 450, 520, 600, 680])  # bands [300, 500) and [500, 700) only
    base = np.exp(-ts / 250.0)

    def make(n, scale):
        labels = rng.integers(0, 3, n)
        e = base[None, None, :] * np.exp(rng.normal(0, 0.1, (n, 3, len(ts)))) * 1.3
        e[np.arange(n), labels] = base * scale * np.exp(rng.normal(0, 0.1, (n, len(ts))))
        return ErrorResult(e, np.ones((n, 3), bool), np.full(n, 18), ts, np.ones(len(ts)), 0.3 * base), labels

    cal, y = make(600, 1.0)
    c = fit_calibration(cal, y, 3)
    assert c["anomaly"]["profile"]["dims"] == [1, 2, 4, 5]  # bands 1-2 and the gaps to the two other classes
    w, ev = class_evidence(cal)
    s_cal = score_anomaly(cal, w, ev, c["anomaly"])
    assert np.isfinite(s_cal).all()
    assert np.mean(s_cal > c["anomaly"]["threshold"]) == pytest.approx(0.04, abs=0.02)
    hard, _ = make(100, 1.6)
    wh, evh = class_evidence(hard)
    assert auroc(s_cal, score_anomaly(hard, wh, evh, c["anomaly"])) > 0.95


def test_class_gap_profile_sees_an_unusual_pattern_of_distances():
    """An unseen kind explained as well as typical cells, with the usual runner-up gap, but close to the
    wrong neighbour: only the every-class gap profile sees it; old metadata keeps the runner-up profile."""
    from napari_cytodiffusion.classify.anomaly import choose_gaps
    from napari_cytodiffusion.classify.calibration import fit_calibration, score_anomaly
    from napari_cytodiffusion.classify.engine import ErrorResult, class_evidence

    rng = np.random.default_rng(2)
    ts = np.array([150, 250, 350, 450, 550, 650, 750, 850])
    base = np.exp(-ts / 250.0)
    scale = 0.2 * base

    def make(n, gaps_to_others):
        """Cells of class 0 whose mean paired gap (in scale units) to classes 1..3 is given."""
        labels = np.zeros(n, dtype=np.int64)
        own = base[None, :] * np.exp(rng.normal(0, 0.1, (n, len(ts))))
        e = np.empty((n, 4, len(ts)))
        e[:, 0] = own
        for j, g in enumerate(gaps_to_others, start=1):
            e[:, j] = own + scale[None, :] * (g + rng.normal(0, 0.3, (n, len(ts))))
        res = ErrorResult(e, np.ones((n, 4), bool), np.full(n, 32), ts, np.ones(len(ts)), scale)
        return res, labels

    cal, y = make(400, (1.0, 3.0, 3.0))
    assert choose_gaps(len(y), 4) == "classes" and choose_gaps(40, 4) == "runner_up"
    new = fit_calibration(cal, y, 4)
    assert new["anomaly"]["gaps"] == "classes"
    normal, _ = make(200, (1.0, 3.0, 3.0))
    odd, _ = make(60, (3.0, 1.0, 3.0))  # same runner-up gap, but to another class

    def scores(res, anomaly):
        w, ev = class_evidence(res)
        return score_anomaly(res, w, ev, anomaly)

    assert auroc(scores(normal, new["anomaly"]), scores(odd, new["anomaly"])) > 0.95
    # metadata written before "gaps" existed: the runner-up profile, which cannot see this cell
    legacy = fit_calibration(cal, y, 4, gaps="runner_up")["anomaly"]
    legacy.pop("gaps")
    s_norm, s_odd = scores(normal, legacy), scores(odd, legacy)
    assert np.isfinite(s_norm).all() and auroc(s_norm, s_odd) < 0.75


def test_a_second_reference_for_another_form_of_a_class():
    """Cells of a class in a form its calibration cells lack (a smear's single platelets beside PBC's
    large platelet images) score against the nearer reference; other classes and cells keep their scores."""
    from napari_cytodiffusion.classify.anomaly import band_dims, fit_component, profile_scores
    from napari_cytodiffusion.classify.calibration import fit_calibration, score_anomaly
    from napari_cytodiffusion.classify.engine import ErrorResult, class_evidence

    rng = np.random.default_rng(3)
    ts = np.array([150, 250, 350, 450, 550, 650, 750, 850])
    base = np.exp(-ts / 250.0)

    def make(n, label, scale):
        labels = np.full(n, label)
        e = base[None, None, :] * np.exp(rng.normal(0, 0.1, (n, 3, len(ts)))) * 1.3
        e[np.arange(n), labels] = base * scale * np.exp(rng.normal(0, 0.1, (n, len(ts))))
        return ErrorResult(e, np.ones((n, 3), bool), np.full(n, 24), ts, np.ones(len(ts)), 0.3 * base)

    parts = [make(200, k, 1.0) for k in range(3)]
    cal = ErrorResult(*(np.concatenate([getattr(r, f) for r in parts]) if f in ("errors", "active", "calls")
                        else getattr(parts[0], f) for f in ErrorResult.__dataclass_fields__))  # fmt: skip
    c = fit_calibration(cal, np.repeat(np.arange(3), 200), 3)["anomaly"]
    thr = c["threshold"]

    def scored(res, anomaly):
        w, ev = class_evidence(res)
        return w, score_anomaly(res, w, ev, anomaly)

    small = make(300, 2, 0.5)  # class 2 in a second form: explained far better than its calibration cells
    w, before = scored(small, c)
    assert (w == 2).all() and np.mean(before > thr) > 0.9
    from napari_cytodiffusion.classify.anomaly import profile_features

    feats = profile_features(small.errors, ts, small.unit_scales, w, c["unit_reference"], gaps=c["gaps"])
    comp = fit_component(feats[:150], c["profile"], 2, "second form", "test cells", thr, 0.96)
    assert (
        comp["n"] == 150 and comp["class"] == 2 and comp["dims"] == list(range(6))
    )  # four bands, gaps to two classes
    bands = fit_component(feats[:150], c["profile"], 2, "bands", "test cells", thr, 0.96, dims=band_dims())
    assert bands["dims"] == [0, 1, 2, 3]
    with_comp = {**c, "profile": {**c["profile"], "components": [comp]}}
    _, after = scored(small, with_comp)
    assert np.mean(after[150:] > thr) < 0.15  # held-out cells of the second form
    assert (after <= before + 1e-12).all()  # the nearer of two references
    # the first form of the class, and the other classes, score as before
    for k in range(3):
        _, a0 = scored(parts[k], c)
        _, a1 = scored(parts[k], with_comp)
        if k != 2:
            assert np.array_equal(a0, a1)
        else:
            assert np.allclose(a0, a1, atol=0.3) and np.mean(a1 > thr) == pytest.approx(
                np.mean(a0 > thr), abs=0.03
            )
    # a size-bound component applies only to cells whose size is known and small enough
    bound = fit_component(feats[:150], c["profile"], 2, "small", "test cells", thr, 0.96, max_size=0.7)
    held = feats[150:]
    wh = w[150:]
    only = {**c["profile"], "components": [bound]}
    assert np.array_equal(profile_scores(held, wh, only), before[150:])  # single-cell images: no sizes
    sizes = np.where(np.arange(len(held)) % 2 == 0, 0.4, 1.0)
    sizes[1] = np.nan
    s_sized = profile_scores(held, wh, only, sizes)
    small_rows = sizes <= 0.7
    assert np.array_equal(s_sized[~small_rows], before[150:][~small_rows])
    assert np.mean(s_sized[small_rows] > thr) < 0.15
    # too hard for either form: still anomalous
    _, hard = scored(make(100, 2, 1.8), with_comp)
    assert np.mean(hard > thr) > 0.9
    with pytest.raises(ValueError, match="complete profiles"):
        fit_component(feats[:5], c["profile"], 2, "second form", "test cells", thr, 0.96)
    assert np.array_equal(profile_scores(feats, w, c["profile"]), before)


def test_pcorrect_fit_shrinks_towards_top_probability_with_few_cells():
    from napari_cytodiffusion.classify.calibration import (
        PCORRECT_IDENTITY,
        default_prior_strength,
        fit_logistic,
    )

    rng = np.random.default_rng(0)

    def cells(n):
        x = rng.normal(0, 1.5, (n, 3))
        p = 1 / (1 + np.exp(-(0.5 + 2.0 * x[:, 0])))  # truth: steeper than the top probability
        return x, (rng.random(n) < p).astype(float)

    x, y = cells(30)
    free = fit_logistic(x, y)
    shrunk = fit_logistic(x, y, l2=default_prior_strength(30), prior=PCORRECT_IDENTITY)
    # few cells: the unpenalised fit wanders (noise coefficients), the prior keeps it near identity
    assert np.abs(shrunk - PCORRECT_IDENTITY).sum() < np.abs(free - PCORRECT_IDENTITY).sum()
    # many cells: no shrinkage by default, and the fit finds the true slope
    x, y = cells(5000)
    assert default_prior_strength(5000) == 0.0
    assert abs(fit_logistic(x, y)[1] - 2.0) < 0.2


def test_domain_check_counts_anomalous_cells_against_the_calibrated_rate():
    from math import comb

    import pandas as pd

    from napari_cytodiffusion.classify.anomaly import binomial_tail, domain_check
    from napari_cytodiffusion.pipeline import summarize

    for k, n, q in [(0, 4, 0.1), (2, 6, 0.04), (5, 5, 0.3), (7, 30, 0.04)]:
        exact = sum(comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, q) == pytest.approx(exact, rel=1e-9)
    assert binomial_tail(3, 2, 0.5) == 0.0
    # 4 % of in-distribution cells score above the threshold (specificity 0.96)
    ok = domain_check(np.r_[np.zeros(288), np.full(12, 2.0)], 1.5, 0.96)
    assert ok["n_anomalous"] == 12 and not ok["shifted"] and ok["p_value"] > 0.1
    assert domain_check(np.r_[np.zeros(2), np.full(3, 2.0)], 1.5, 0.96)["shifted"]  # 3 of 5: p = 6e-4
    assert not domain_check(np.r_[np.zeros(3), np.full(2, 2.0)], 1.5, 0.96)["shifted"]  # 2 of 5: p = 0.015
    assert not domain_check(np.array([np.nan]), 1.5, 0.96)["shifted"]  # nothing scored

    table = pd.DataFrame(
        {
            "classified": [True] * 6 + [False],
            "class": ["a"] * 6 + ["red cell (not classified)"],
            "flagged": [False] * 7,
            "anomaly": [3.0, 2.5, 2.0, 1.9, 0.2, 0.1, np.nan],
        }
    )
    s = summarize(table, ["a", "b"], anomaly_reference={"threshold": 1.5, "specificity": 0.96})
    assert s["domain_check"]["n_anomalous"] == 4 and s["domain_check"]["shifted"]
    assert s["verdict"] == "needs review" and any(
        "unlike the model's training cells" in r for r in s["reasons"]
    )
    assert summarize(table, ["a", "b"])["domain_check"] is None  # no reference: no claim


def test_platelets_enter_the_triage_only_with_a_reference_for_their_smear_form():
    """Single smear platelets score anomalous against a reference fitted on PBC's platelet images only:
    without a smear-platelet component they stay out of the flagged share and the domain check."""
    import pandas as pd

    from napari_cytodiffusion.pipeline import summarize

    ref = {"threshold": 1.5, "specificity": 0.96, "profile": {"means": [[0.0], [0.0]]}}
    n_white, n_plt = 20, 12
    table = pd.DataFrame(
        {
            "classified": [True] * (n_white + n_plt),
            "class": ["neutrophil"] * n_white + ["platelet"] * n_plt,
            "flagged": [False] * n_white + [True] * n_plt,
            "anomaly": [0.3] * n_white + [3.0] * n_plt,
        }
    )
    classes = ["neutrophil", "platelet"]
    s = summarize(table, classes, anomaly_reference=ref)
    assert s["flag_exempt_classes"] == ["platelet"]
    assert s["verdict"] == "routine" and s["reasons"] == []
    from napari_cytodiffusion.layers import legend_html

    note = "platelet: not in the flagged share or the domain check"
    assert note in legend_html(s, classes, ["#ff0000", "#00ff00"])
    assert s["domain_check"]["n"] == n_white and s["domain_check"]["n_anomalous"] == 0
    assert s["n_flagged"] == n_plt and s["n_triaged"] == n_white and s["n_triaged_flagged"] == 0
    # a reference with a smear form for platelets (the shipped models): they count like any class
    comp = {"class": 1, "name": "smear platelets", "max_size": 0.71}
    with_form = {**ref, "profile": {**ref["profile"], "components": [comp]}}
    s = summarize(table, classes, anomaly_reference=with_form)
    assert s["flag_exempt_classes"] == [] and s["n_triaged"] == n_white + n_plt
    assert note not in legend_html(s, classes, ["#ff0000", "#00ff00"])
    assert s["domain_check"]["n_anomalous"] == n_plt and s["domain_check"]["shifted"]
    assert s["reasons"][0].startswith("38% of classified cells flagged")
    # a component without a size bound is not a smear form; an explicit list is taken as given
    loose = {**ref, "profile": {**ref["profile"], "components": [{"class": 1, "name": "x"}]}}
    assert summarize(table, classes, anomaly_reference=loose)["flag_exempt_classes"] == ["platelet"]
    s = summarize(table, classes, {"flag_exempt_classes": []}, anomaly_reference=ref)
    assert s["domain_check"]["n_anomalous"] == n_plt
    # white cells flagged are still a reason, named as such
    table.loc[:4, "flagged"] = True
    s = summarize(table, classes, anomaly_reference=ref)
    assert s["reasons"] == ["25% of classified cells other than platelet flagged (> 10%)"]


def test_domain_check_on_real_cells_from_another_lab(shared_data, tmp_path, capsys):
    """segmentation_WBC dataset 1 (rapid stain, another microscope) vs PBC val cells."""
    import pandas as pd

    from napari_cytodiffusion.classify.anomaly import domain_check
    from napari_cytodiffusion.classify.classifier import calibration_for
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image

    model = get_model("default")
    ref = calibration_for(model)["anomaly"]
    pbc = _pbc_subset(shared_data, 2)
    other = pd.read_csv(shared_data / "segmentation_wbc" / "labels_dataset_1.csv").iloc[:12, 0]
    sets = {
        "pbc": [read_image(shared_data / "pbc" / p) for p in pbc.path],
        "other lab": [
            read_image(shared_data / "segmentation_wbc" / "dataset_1" / f"{int(i):03d}.png") for i in other
        ],
    }
    checks = {}
    for name, images in sets.items():
        crops = single_cell_crops(images, model.metadata.preprocessing)
        res = classify_crops(model, crops, speed="balanced", seed=0)
        checks[name] = domain_check(res.anomaly, ref["threshold"], ref["specificity"])
    assert not checks["pbc"]["shifted"], checks
    assert checks["other lab"]["shifted"], checks
    # the CLI says so in one line
    files = [str(shared_data / "segmentation_wbc" / "dataset_1" / f"{int(i):03d}.png") for i in other]
    assert main(["classify", *files, "--out", str(tmp_path / "cls")]) == 0
    warning = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "unlike the model's training cells" in warning[0]
    # ... writes it down, and its review page shows each image in the gallery of its class, the shift on top
    assert json.loads((tmp_path / "cls" / "domain_check.json").read_text())["shifted"]
    page = (tmp_path / "cls" / "report.html").read_text(encoding="utf-8")
    assert "<b>Domain check</b>:" in page and "12 cell images" in page
    gallery = page[page.index("<h2>Cells by class</h2>") :]
    assert gallery.count("<figure") == 12 and "<h2>Images</h2>" not in page
    assert "<h2 id='about-model'>About the model</h2>" in page  # what the model never learnt, too
    for i in other:
        assert f"{int(i):03d}.png</figcaption>" in gallery
    flagged = pd.read_csv(tmp_path / "cls" / "predictions.csv")["flagged"].sum()
    review = page[page.index("<h2>Review first</h2>") : page.index("<h2>Cells by class</h2>")]
    assert review.count("<figure") == flagged


def test_single_cell_crops_at_a_given_scale_ignore_the_framing(shared_data, tmp_path, monkeypatch):
    """--red-cell-px: a cell image framed wider (another magnification or export) crops as the original."""
    from PIL import Image

    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image

    model = get_model("default")
    pre = model.metadata.preprocessing
    pbc = _pbc_subset(shared_data, 1)
    images = [read_image(shared_data / "pbc" / p)[9:-9, 9:-9] for p in pbc.path]  # 110 px
    framed = [np.pad(im, ((40, 40), (40, 40), (0, 0)), mode="reflect") for im in images]  # 190 px
    # at the scale that makes the training crop's side (65 % of 110 px), the framing does not matter
    red_cell_px = 0.65 * 110 / pre["smear"]["field_rbc_diameters"]
    default = single_cell_crops(images, pre)
    assert np.array_equal(single_cell_crops(framed, pre, red_cell_px), default)
    assert not np.array_equal(single_cell_crops(framed, pre), default)  # a fixed share of the image does
    # a scale larger than the image reflects it, as smear crops do
    assert single_cell_crops(images[:1], pre, 100.0).shape == (1, 32, 32, 3)
    # the CLI crops at the given scale and records it
    for k, im in enumerate(framed[:2]):
        Image.fromarray(im).save(tmp_path / f"cell{k}.png")
    out = tmp_path / "cls"
    monkeypatch.chdir(tmp_path)
    files = ["cell0.png", "cell1.png"]  # given relative to the working folder
    assert (
        main(["classify", *files, "--out", str(out), "--speed", "fast", "--red-cell-px", f"{red_cell_px}"])
        == 0
    )
    audit = json.loads((out / "predictions.csv.audit.json").read_text())
    assert audit["parameters"]["red_cell_px"] == pytest.approx(red_cell_px)
    # single-cell images (an analyser's export of a slide's white cells): their differential
    import pandas as pd

    calls = pd.read_csv(out / "predictions.csv")["class"]
    diff = json.loads((out / "differential.json").read_text())
    white = [c for c in diff["percent"]]
    assert diff["leukocytes"] == int(calls.isin(white).sum()) and diff["imprecise"]
    assert (out / "differential.png").is_file() == (diff["leukocytes"] > 0)
    # the images are recorded by their absolute path, so a report made from another folder shows them
    assert list(pd.read_csv(out / "predictions.csv")["path"]) == [str(tmp_path / f) for f in files]
    monkeypatch.chdir(out)
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text(encoding="utf-8").count('src="data:image/jpeg') >= 2


def test_the_null_label_is_evaluated_at_every_unit_with_the_cells_own_noise(tiny_model, tiny_dataset):
    """``EngineConfig.null``: one more call per unit and cell, the class errors and calls of the run
    otherwise unchanged, the null errors those of the null label run as a class with the same noise,
    and a replay of a full grid with them gives the live run."""
    from napari_cytodiffusion.classify.engine import EngineConfig, diffusion_errors, replay_errors
    from napari_cytodiffusion.crops import single_cell_crops, to_model_tensor
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model

    model = load_model(tiny_model)
    ls = read_labelled(tiny_dataset)
    x0 = to_model_tensor(
        single_cell_crops([read_image(p) for p in ls.paths[::4]], model.metadata.preprocessing)
    )
    c, ids, ts = model.metadata.n_classes, np.arange(len(x0)) + 11, [100, 250, 400, 550, 700, 850]
    args = (model.unet, model.alphas_cumprod(), x0)
    plain = diffusion_errors(*args, c, EngineConfig(timesteps=ts, drop_z=0.5), cell_ids=ids)
    with_null = diffusion_errors(*args, c, EngineConfig(timesteps=ts, drop_z=0.5, null=True), cell_ids=ids)
    assert plain.null_errors is None and with_null.null_errors.shape == (len(x0), len(ts))
    assert np.array_equal(with_null.calls, plain.calls + len(ts))
    assert np.allclose(np.nan_to_num(with_null.errors), np.nan_to_num(plain.errors), rtol=1e-5)
    assert np.array_equal(with_null.active, plain.active)
    grid = diffusion_errors(*args, c + 1, EngineConfig(timesteps=ts, adaptive=False), cell_ids=ids)
    assert np.allclose(with_null.null_errors, grid.errors[:, c], rtol=1e-5)  # the null id is the last
    cfg = EngineConfig(timesteps=ts, drop_z=0.5, null=True)
    replayed = replay_errors(
        grid.errors[:, :c], ts, np.ones(len(ts)), np.ones(len(ts)), cfg, grid.errors[:, c]
    )
    assert np.array_equal(replayed.calls, with_null.calls) and np.array_equal(
        replayed.active, with_null.active
    )
    with pytest.raises(ValueError, match="null label's errors"):
        replay_errors(grid.errors[:, :c], ts, np.ones(len(ts)), np.ones(len(ts)), cfg)


def test_null_gap_profile_sees_a_cell_its_class_label_does_not_help(tiny_model, tiny_dataset):
    """``gaps="null"``: a cell its best class explains hardly better than the null label does scores high,
    though its band errors and class gaps are typical; a model whose profile needs the null label has
    the engine evaluate it, and classifying then works end to end."""
    from napari_cytodiffusion.classify.anomaly import needs_null
    from napari_cytodiffusion.classify.calibration import fit_calibration, score_anomaly
    from napari_cytodiffusion.classify.classifier import engine_config
    from napari_cytodiffusion.classify.engine import ErrorResult, class_evidence
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.datasets import read_labelled
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model

    rng = np.random.default_rng(3)
    ts = np.array([150, 250, 350, 450, 550, 650, 750, 850])
    base, scale = np.exp(-ts / 250.0), 0.2 * np.exp(-ts / 250.0)

    def make(n, null_gap):
        labels = rng.integers(0, 3, n)
        own = base[None, :] * np.exp(rng.normal(0, 0.1, (n, len(ts))))
        e = own[:, None, :] + scale[None, None, :] * (2.0 + rng.normal(0, 0.3, (n, 3, len(ts))))
        e[np.arange(n), labels] = own
        null = own + scale[None, :] * (null_gap + rng.normal(0, 0.3, (n, len(ts))))
        return ErrorResult(
            e, np.ones((n, 3), bool), np.full(n, 32), ts, np.ones(len(ts)), scale, null
        ), labels

    cal, y = make(600, 3.0)
    c = fit_calibration(cal, y, 3)
    assert c["anomaly"]["gaps"] == "null" and needs_null(c["anomaly"])  # chosen when the run has them
    assert not needs_null(fit_calibration(cal, y, 3, gaps="classes")["anomaly"])

    def scores(res):
        w, ev = class_evidence(res)
        return score_anomaly(res, w, ev, c["anomaly"])

    normal, _ = make(200, 3.0)
    unhelped, _ = make(60, 0.3)  # the label hardly helps: a kind the classes do not describe
    assert auroc(scores(normal), scores(unhelped)) > 0.95
    without = ErrorResult(
        *[getattr(normal, f) for f in ("errors", "active", "calls")], ts, normal.unit_weights, scale
    )
    with pytest.raises(ValueError, match="null label's errors"):
        scores(without)

    model = load_model(tiny_model)
    crops = single_cell_crops([read_image(p) for p in read_labelled(tiny_dataset).paths[::3]],
                              model.metadata.preprocessing)  # fmt: skip
    ts_tiny = [100, 300, 500, 700]
    assert not engine_config(model, "balanced").null
    from napari_cytodiffusion.classify.engine import EngineConfig, crop_ids, diffusion_errors
    from napari_cytodiffusion.crops import to_model_tensor

    res = diffusion_errors(model.unet, model.alphas_cumprod(), to_model_tensor(crops), 2,
                           EngineConfig(timesteps=ts_tiny, null=True), cell_ids=crop_ids(crops))  # fmt: skip
    labels = np.array([0 if "redcell" in str(p) else 1 for p in read_labelled(tiny_dataset).paths[::3]])
    fitted = fit_calibration(res, labels, 2, gaps="null")
    model.metadata.calibration = (
        dict(model.metadata.calibration) | fitted | {"engine": {"timesteps": ts_tiny}}
    )
    assert engine_config(model, "balanced").null
    out = classify_crops(model, crops)
    assert np.isfinite(out.anomaly).all() and (out.unet_calls >= len(ts_tiny) + 2).all()
    assert np.allclose(out.anomaly, classify_crops(model, crops).anomaly)  # deterministic

    # recalibrate (calibrate_presets.py --null) switches a preset's profile either way, or keeps it
    from napari_cytodiffusion.classify.calibration import recalibrate

    assert needs_null(recalibrate(model, crops, labels)[0]["anomaly"])
    assert not needs_null(recalibrate(model, crops, labels, null=False)[0]["anomaly"])
    model.metadata.calibration = dict(model.metadata.calibration) | {"anomaly": {}}
    assert needs_null(recalibrate(model, crops, labels, null=True)[0]["anomaly"])
