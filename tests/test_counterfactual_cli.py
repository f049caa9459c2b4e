"""``counterfactual``: the Cell inspector's pictures for many cells, with a control, from the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_cytodiffusion.cli.main import main


def test_single_cells_are_redrawn_as_the_target_with_their_own_class_as_control(
    tiny_model, tiny_dataset, tmp_path, capsys
):
    from napari_cytodiffusion.classify.counterfactual import explain
    from napari_cytodiffusion.crops import single_cell_crops
    from napari_cytodiffusion.io.images import read_image
    from napari_cytodiffusion.model.folder import load_model

    files = [tiny_dataset / "violet" / "violet_0.png", tiny_dataset / "redcell" / "redcell_0.png"]
    out = tmp_path / "cf"
    args = ["counterfactual", *map(str, files), "--target", "VIOLET", "--model", str(tiny_model)]
    assert main([*args, "--out", str(out), "--speed", "full", "--strength", "0.4"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("2 cells redrawn as violet (strength 0.4)")
    table = pd.read_csv(out / "counterfactuals.csv")
    assert list(table["name"]) == ["violet_0", "redcell_0"] and set(table["target"]) == {"violet"}
    assert (table["explained_from"] == table["call"]).all()  # from each cell's call
    assert "label" not in table  # single-cell images have no label id
    for row in table.itertuples():
        assert (out / row.picture).is_file() and row.picture == f"{row.name}_as_violet.png"
        assert 0 < row.p_call <= 1 and (row.call != "violet" or row.p_target == row.p_call)
    # a cell called the target is redrawn as itself: nothing for the class to change
    same = table[table["call"] == "violet"]
    assert (same["class_change"] == 0).all()
    assert (table[table["call"] != "violet"]["class_change"] > 0).all()
    # the figures are those of the library function, with the same seed
    model = load_model(tiny_model)
    crops = single_cell_crops([read_image(f) for f in files], model.metadata.preprocessing)
    sources = [model.class_index(c) for c in table["call"]]
    *_, found = explain(model, crops, model.class_index("violet"), sources, strength=0.4, seed=0)
    assert np.allclose([f.class_change for f in found], table["class_change"], atol=1e-3)
    assert (out / "counterfactuals.csv.audit.json").is_file()


def test_cells_of_a_smear_by_label_id(tiny_model, tmp_path, capsys):
    from napari_cytodiffusion.sample_data import synthetic_smear

    image, truth = synthetic_smear(seed=2, height=160, width=200, n_rbc=8, n_wbc=1, n_platelets=0)
    Image.fromarray(image).save(tmp_path / "field.png")
    tifffile.imwrite(tmp_path / "field_labels.tif", truth.astype(np.uint32))
    ids = [int(v) for v in np.unique(truth) if v][:2]
    out = tmp_path / "cf"
    args = ["counterfactual", str(tmp_path / "field.png"), "--labels", str(tmp_path / "field_labels.tif")]
    common = ["--model", str(tiny_model), "--speed", "fast", "--target", "redcell"]
    assert (
        main([*args, *common, "--cells", ",".join(map(str, ids)), "--source", "violet", "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out / "counterfactuals.csv")
    assert sorted(table["label"]) == ids and set(table["explained_from"]) == {"violet"}
    assert all((out / f"field_cell{i}_as_redcell.png").is_file() for i in ids)
    capsys.readouterr()
    # a cell the labels do not hold, --cells without --labels, an unknown class: one line, exit 2
    assert main([*args, *common, "--cells", "999", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "error: field_labels.tif has no cell 999"
    assert (
        main(
            [
                "counterfactual",
                str(tmp_path / "field.png"),
                *common,
                "--cells",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "give its --labels too" in capsys.readouterr().err
    bad = [a if a != "redcell" else "megakaryocyte" for a in common]
    assert main([*args, *bad, "--out", str(tmp_path / "x")]) == 2
    assert "unknown class 'megakaryocyte'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize("value", ["0", "1.5", "x"])
def test_a_strength_outside_the_schedule_is_refused(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["counterfactual", "a.png", "--target", "ig", "--strength", value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--strength" in err and err.count("\n") == 1
