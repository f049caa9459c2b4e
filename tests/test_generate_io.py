import json
import os

import numpy as np
import pytest

from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.errors import InputError
from napari_cytodiffusion.generate.sampling import GenerateParams, generate
from napari_cytodiffusion.io.atomic import write_with
from napari_cytodiffusion.io.images import to_rgb_float
from napari_cytodiffusion.model.folder import load_model


@pytest.mark.parametrize("scheduler", ["dpm-sde", "dpm", "ddim"])
def test_generation_is_seed_deterministic(tiny_model, scheduler):
    m = load_model(tiny_model)
    p = GenerateParams(steps=4, guidance=2.0, scheduler=scheduler)
    a = generate(m, [0, 1, 0], [5, 6, 7], p)
    b = generate(m, [0], [5], p)  # same seed alone in its batch: the same image
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], a[2])  # same class, another seed
    batched = generate(
        m, [0, 1, 0], [5, 6, 7], GenerateParams(steps=4, guidance=2.0, scheduler=scheduler, batch_size=2)
    )
    assert np.array_equal(a, batched)


def test_the_stochastic_sampler_draws_step_noise_from_the_seed(tiny_model):
    m = load_model(tiny_model)
    sde = generate(m, [0], [5], GenerateParams(steps=4, guidance=2.0))
    ode = generate(m, [0], [5], GenerateParams(steps=4, guidance=2.0, scheduler="dpm"))
    assert not np.array_equal(sde, ode)  # same start, fresh noise along the way
    with pytest.raises(InputError, match="dpm-sde"):
        generate(m, [0], [5], GenerateParams(scheduler="euler"))


def test_generate_cli_writes_class_folders(tiny_model, tmp_path, capsys):
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model),
                "--class",
                "all",
                "-n",
                "2",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(out.glob("*/*.png"))
    assert len(files) == 4
    side = json.loads(files[0].with_suffix(".json").read_text())
    assert {"class", "seed", "steps", "guidance", "scheduler", "model"} <= set(side)
    # the sidecar records the defaults that were used, the same as the Python API's
    defaults = GenerateParams()
    assert (
        (side["scheduler"], side["guidance"]) == (defaults.scheduler, defaults.guidance) == ("dpm-sde", 4.0)
    )
    # the same seeds again with another guidance: the first cells stay, the new ones take free names;
    # the same generation again replaces its own files
    args = ["generate", "--model", str(tiny_model), "--class", "all", "-n", "2", "--steps", "3"]
    before = {p: p.read_bytes() for p in files}
    assert main([*args, "--guidance", "1", "--out", str(out)]) == 0
    assert all(p.read_bytes() == b for p, b in before.items())
    again = sorted(out.glob("*/*-2.png"))
    assert len(again) == 4 and json.loads(again[0].with_suffix(".json").read_text())["guidance"] == 1
    capsys.readouterr()
    assert main([*args, "--guidance", "1", "--out", str(out)]) == 0  # run again: nothing to redo
    assert len(list(out.glob("*/*.png"))) == 8
    printed = capsys.readouterr().out
    assert printed.startswith("generated 0 cells in ") and "; 4 already there" in printed


def test_generate_cli_writes_batch_by_batch_the_images_of_one_call(tiny_model, tmp_path, capsys):
    """40 cells (two of the sampler's batches of 32) are written as each batch ends; they are the cells
    one call of the library makes, and a run cut short is completed, not redone, by running it again."""
    from PIL import Image

    out = tmp_path / "gen"
    args = [
        "generate",
        "--model",
        str(tiny_model),
        "--class",
        "all",
        "-n",
        "20",
        "--steps",
        "2",
        "--seed",
        "7",
    ]
    assert main([*args, "--out", str(out)]) == 0
    m = load_model(tiny_model)
    ids = [c for c in range(2) for _ in range(20)]
    same = generate(m, ids, [7 + i for i in range(40)], GenerateParams(steps=2))
    for i, (c, image) in enumerate(zip(ids, same, strict=True)):
        name = m.classes[c]
        assert np.array_equal(np.asarray(Image.open(out / name / f"{name}_seed{7 + i}.png")), image)
    last = sorted(out.glob("violet/*.png"))[-1]  # a cell of the second batch lost, as if cut short
    last.unlink()
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 0
    assert "generated 8 cells" in capsys.readouterr().out and last.is_file()  # only that batch again


def test_evaluate_generation_feature_distance_and_memorisation(tiny_model, tiny_dataset, tmp_path):
    gen = tmp_path / "gen"
    assert main(["generate", "--model", str(tiny_model), "--class", "all", "-n", "4", "--steps", "3",
                 "--out", str(gen)]) == 0  # fmt: skip
    out = tmp_path / "geneval"
    assert main(["evaluate-generation", "--model", str(tiny_model), "--generated", str(gen),
                 "--train-data", str(tiny_dataset), "--out", str(out)]) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 8 and 0 <= m["generative_classifier_agreement"] <= 1
    assert {"median_nn_distance_generated_to_train", "median_nn_distance_train_to_train"} <= set(
        m["memorisation"]
    )
    fd = m["feature_distance"]["per_class"]
    assert set(fd) == {"redcell", "violet"}
    for v in fd.values():
        assert v["generated_vs_real"] >= 0 and v["real_subset_vs_rest"] >= 0 and v["n_generated"] == 4


def test_frechet_distance_properties():
    from napari_cytodiffusion.evaluate.generation import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + np.array([2.0, 0, 0, 0]))
    assert shifted == pytest.approx(4.0, rel=1e-3)  # mean shift of 2 → 2²


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((32, 32), np.uint16) + 1000,
        np.random.default_rng(0).random((32, 32, 4)).astype(np.float32),
        np.full((32, 32, 1), 7, np.int32),
        np.full((3, 32, 32), 0.5),
    ],
)
def test_images_of_many_kinds_become_rgb01(arr):
    out = to_rgb_float(arr)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1


@pytest.mark.parametrize(
    "bad", [np.zeros(10), np.zeros((2, 2, 2, 2, 2)), np.full((16, 16), np.nan), np.zeros((4, 4))]
)
def test_bad_arrays_raise_input_error(bad):
    with pytest.raises(InputError):
        to_rgb_float(bad)


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def failing(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match="No space left"):
        write_with(target, failing)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_counterfactual_map_and_sdedit(tiny_model):
    from napari_cytodiffusion.classify.counterfactual import counterfactual_map
    from napari_cytodiffusion.generate.sampling import sdedit

    m = load_model(tiny_model)
    crop = generate(m, [0], [1], GenerateParams(steps=3))[0]
    heat = counterfactual_map(m, crop, target=1, source=0)
    assert heat.shape == (16, 16) and (heat >= 0).all() and heat.max() > 0
    assert np.allclose(heat, counterfactual_map(m, crop, target=1, source=0))
    assert counterfactual_map(m, crop, target=0, source=0).max() == 0
    with pytest.raises(InputError):
        counterfactual_map(m, crop, target=5)
    same = sdedit(m, crop[None], target=1, strength=0.0)
    assert np.array_equal(same[0], crop)
    cf = sdedit(m, crop[None], target=1, strength=0.6, params=GenerateParams(steps=5))
    assert cf.shape == (1, 16, 16, 3) and not np.array_equal(cf[0], crop)


def test_outputs_get_normal_permissions_not_private_temp_ones(tiny_model, tmp_path):
    """Atomic writes go through private temp files; what lands must look like a plain write."""
    import stat

    from napari_cytodiffusion.io.atomic import write_json, write_text
    from napari_cytodiffusion.model.folder import save_model

    old = os.umask(0o022)
    try:
        new = write_json(tmp_path / "metrics.json", {"a": 1})
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "shared.csv"
        kept.write_text("x")
        kept.chmod(0o664)  # a group-writable file keeps its mode when replaced
        write_text(kept, "y")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o664 and kept.read_text() == "y"
        model = load_model(tiny_model)
        folder = save_model(model.unet, model.scheduler, model.metadata, tmp_path / "copy")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        assert stat.S_IMODE((folder / "cytodiffusion.json").stat().st_mode) == 0o644
        assert load_model(folder).metadata.content_hash == model.metadata.content_hash
    finally:
        os.umask(old)
