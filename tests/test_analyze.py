import json

import numpy as np
import pandas as pd
from PIL import Image

from napari_cytodiffusion.cli.main import main
from napari_cytodiffusion.sample_data import synthetic_smear


def test_analyze_on_a_two_worker_local_cluster(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    for s in (1, 2):
        Image.fromarray(synthetic_smear(seed=s)[0]).save(inp / f"smear{s}.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = tmp_path / "out"
    code = main(["analyze", str(inp), "--out", str(out), "--workers", "2", "--speed", "fast", "--pool-scale"])
    assert code == 1  # one bad file fails alone (here in the first pass, measuring the scale on the workers)
    scale = json.loads((out / "cohort_scale.json").read_text())
    assert scale["images"] == 2 and scale["of_images"] == 2
    cohort = pd.read_csv(out / "cohort.csv").set_index("image")
    assert cohort.loc["broken.png", "status"] == "error"
    assert "cannot read" in cohort.loc["broken.png", "error"]
    for s in (1, 2):
        assert cohort.loc[f"smear{s}.png", "status"] == "ok"
        assert cohort.loc[f"smear{s}.png", "n_cells"] >= 40
        assert cohort.loc[f"smear{s}.png", "red_cell_px"] == scale["pixels"]
        for suffix in ("_cells.csv", "_labels.tif", "_summary.json"):
            assert (out / f"smear{s}{suffix}").is_file()
    pooled = json.loads((out / "cohort_domain_check.json").read_text())  # the cells of both smears, pooled
    assert pooled["images"] == 2 and pooled["n"] == cohort["n_scored"].sum() > 0
    assert pooled["n_anomalous"] == cohort["n_anomalous"].sum()
    said = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("[") and "broken.png: error: cannot read" in ln for ln in said), said  # why, too
    check = [
        ln
        for ln in said
        if ln.startswith("domain check over 2 images")
        or (ln.startswith("warning: over 2") and "expected" in ln)
    ]
    assert len(check) == 1 and f"{pooled['n_anomalous']} of {pooled['n']}" in check[0]
    # the white-cell differential of both fields pooled, with its counting error
    diff = json.loads((out / "cohort_differential.json").read_text())
    white = list(diff["percent"])
    assert diff["images"] == 2 and diff["leukocytes"] == sum(cohort[f"n_{c}"].sum() for c in white) > 0
    assert diff["leukocytes"] == cohort["n_white_cells"].sum()
    # the slide's alerts pool what each field's alerts counted (unflagged calls)
    assert set(diff["alert_counts"]) == {"erythroblast", "ig"}
    assert diff["alert_counts"]["ig"] == cohort["alert_n_ig"].sum() <= cohort["n_ig"].sum()
    for alert in diff["alerts"]:  # each said as a warning
        assert f"warning: over 2 images, {alert}" in said
    assert diff["counts"]["platelet"] == cohort["n_platelet"].sum()
    assert (out / "cohort_differential.png").read_bytes().startswith(b"\x89PNG")
    assert [ln for ln in said if ln.startswith("over 2 images, white-cell differential of")]
    # re-running skips finished images: only the broken one is tried again; a run killed between an
    # image's outputs and its cohort row (here: no table at all) gets the rows rebuilt from the summaries
    (out / "cohort.csv").unlink()
    assert main(["analyze", str(inp), "--out", str(out), "--speed", "fast"]) == 1
    log = (out / "analyze.log").read_text()
    assert "3 images, 2 already done" in log
    assert "2 cohort rows rebuilt" in log
    assert "peak memory per worker: pid" in log
    assert (cohort[cohort["status"] == "ok"]["peak_rss_mb"] > 100).all()  # workers holding torch + models
    assert len(pd.read_csv(out / "cohort.csv")) == 3


def test_analyze_time_limit_fails_the_image_and_restarts_its_worker(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(synthetic_smear(seed=3)[0]).save(inp / "slow.png")
    out = tmp_path / "out"
    # loading both models in a fresh worker alone takes longer than 1 s
    code = main(
        ["analyze", str(inp), "--out", str(out), "--workers", "2", "--speed", "fast", "--timeout", "1"]
    )
    assert code == 1
    cohort = pd.read_csv(out / "cohort.csv").set_index("image")
    assert cohort.loc["slow.png", "status"] == "error"
    assert "timed out after 1 s (worker restarted)" in cohort.loc["slow.png", "error"]
    log = (out / "analyze.log").read_text()
    assert "slow.png: still running after 1 s on ['tcp://" in log
    assert "stack:" in log
    # nothing half-written for the image that was stopped; a re-run tries it again
    assert not list(out.glob("slow_*"))
    assert not list(out.glob(".*"))


def test_pooled_domain_check_sees_what_single_fields_cannot():
    from napari_cytodiffusion.batch import pooled_domain_check

    # 40 fields of 3 classified cells, one anomalous in each: no field alone is unusual (p 0.12),
    # but 40 of 120 cells against 4 % expected is
    field = {"status": "ok", "n_scored": 3, "n_anomalous": 1, "expected_anomalous_fraction": 0.04}
    unscored = dict(field, n_scored=float("nan"))  # an image without classified cells, read back from CSV
    pooled = pooled_domain_check(
        [dict(field, image=f"f{i}") for i in range(40)] + [{"status": "error"}, unscored]
    )
    assert pooled["images"] == 40 and pooled["n"] == 120 and pooled["n_anomalous"] == 40
    assert pooled["shifted"] and pooled["p_value"] < 1e-10
    calm = pooled_domain_check([dict(field, n_scored=30, image=f"f{i}") for i in range(10)])
    assert not calm["shifted"]  # 10 of 300 cells: what 4 % predicts
    assert pooled_domain_check([{"status": "error"}]) is None


def test_analyze_passes_every_option_to_the_pipeline(shared_data, tmp_path):
    """--no-platelets, --border-pad, --no-large-cells, --no-size-check and --red-cell-px reach each image's run."""
    field = sorted((shared_data / "txl_pbc" / "images" / "val").glob("*"))[0]
    out = tmp_path / "out"
    args = ["analyze", str(field), "--out", str(out), "--speed", "fast", "--no-platelets"]
    assert (
        main([*args, "--border-pad", "0.15", "--no-large-cells", "--no-size-check", "--red-cell-px", "41"])
        == 0
    )
    summary = json.loads((out / f"{field.stem}_summary.json").read_text())
    assert (
        summary["reference_diameter"]["pixels"] == 41.0 and summary["reference_diameter"]["cells"] == "given"
    )
    assert summary["reference_diameter"]["whole_red_cells"] >= 1  # counted whether or not the scale is given
    audit = summary["audit"]["parameters"]
    assert audit["size_check"] is False and audit["red_cell_px"] == 41.0
    cohort = pd.read_csv(out / "cohort.csv")  # each image's scale, to compare across one camera's images
    assert cohort["red_cell_px"].tolist() == [41.0] and cohort["red_cell_from"].tolist() == ["given"]
    seg = audit["segmentation"]
    assert seg["platelets"] is False and seg["large_cells"] is False and seg["border_pad"] == 0.15
    assert seg["diameter_from"] in ("automatic", "model scale") and seg["diameter_used_px"] > 0
    table = pd.read_csv(out / f"{field.stem}_cells.csv")
    assert {"size", "size_implausible", "class_by_appearance"} <= set(table.columns)
    assert not table["size_implausible"].any()  # the check was off


def test_pooled_reference_is_the_median_of_every_images_red_cells():
    import numpy as np

    from napari_cytodiffusion.pipeline import pooled_reference

    # three cell-centred images of one camera with 2-3 red cells each: too few for any one image
    cells = {"a.png": [40.0, 42.0], "b.png": [41.0, 43.0, 44.0], "c.png": [], "d.png": [39.0]}
    pooled = pooled_reference(cells)
    assert pooled["pixels"] == 41.5 and pooled["cells"] == 6
    assert pooled["images"] == 3 and pooled["of_images"] == 4 and pooled["off_scale"] == []
    # an image of another magnification stands out once it has enough red cells of its own
    pooled = pooled_reference(
        {**cells, "g.png": [41.0] * 20, "e.png": list(np.full(12, 60.0)), "f.png": [60.0] * 5}
    )
    assert pooled["off_scale"] == ["e.png"]
    # ... and is left out of the pool: the median of the rest (f's 5 cells are too few to judge)
    assert pooled["pixels"] == 41.0 and pooled["cells"] == 6 + 20 + 5 and pooled["images"] == 5
    assert pooled_reference({"a.png": [40.0, 41.0], "b.png": []}) is None


def test_analyze_pool_scale_classifies_every_image_at_one_measured_scale(tmp_path, capsys):
    import numpy as np

    from napari_cytodiffusion.export import read_labels_tiff
    from napari_cytodiffusion.io.images import read_image, to_rgb_float
    from napari_cytodiffusion.pipeline import stained_score, whole_red_cells
    from napari_cytodiffusion.segmentation.table import cells_table

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(synthetic_smear(seed=1)[0]).save(inp / "a.png")
    Image.fromarray(synthetic_smear(seed=2)[0]).save(inp / "b.png")
    # another magnification: red cells 2/3 the size, more than 20 % off the pool
    Image.fromarray(synthetic_smear(240, 320, seed=3, rbc_diameter=30, n_rbc=40)[0]).save(inp / "c.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = tmp_path / "out"
    assert main(["analyze", str(inp), "--out", str(out), "--speed", "fast", "--pool-scale"]) == 1
    scale = json.loads((out / "cohort_scale.json").read_text())
    # the pool is every image's whole red cells, as the pipeline picks them, but for c's: its own
    # red cells say it was taken at another scale
    pool = []
    for name in ("a", "b"):
        labels, _ = read_labels_tiff(out / f"{name}_labels.tif")
        rgb = to_rgb_float(read_image(inp / f"{name}.png"))
        table = cells_table(labels, rgb)
        red = whole_red_cells(table, stained_score(rgb, labels, table["label"].to_numpy()))
        pool += list(table["equivalent_diameter"].to_numpy()[red])
    assert scale["cells"] == len(pool) > 60 and scale["images"] == 2 and scale["of_images"] == 3
    assert abs(scale["pixels"] - np.median(pool)) < 0.01
    assert scale["off_scale"] == ["c.png"]
    said = capsys.readouterr().out
    assert f"a red cell is {scale['pixels']:.1f} px across" in said
    assert "more than 20% off that size" in said and "keep their own scale: c.png" in said
    cohort = pd.read_csv(out / "cohort.csv").set_index("image")
    assert "cannot read" in cohort.loc["broken.png", "error"]  # failed in the first pass, alone
    own = json.loads((out / "c_summary.json").read_text())
    assert own["reference_diameter"]["cells"] == "whole red cells"
    assert own["reference_diameter"]["pixels"] < 0.8 * scale["pixels"]
    assert own["audit"]["parameters"]["red_cell_px"] is None
    for name in ("a", "b"):
        summary = json.loads((out / f"{name}_summary.json").read_text())
        assert summary["reference_diameter"]["pixels"] == scale["pixels"]
        assert summary["reference_diameter"]["cells"].startswith(f"pooled: {scale['cells']} whole red cells")
        assert summary["size_check"] == "applied"
        audit = summary["audit"]["parameters"]
        assert audit["red_cell_px_from"] == "pooled" and audit["segmentation"]["model"] == "smear"
        assert cohort.loc[f"{name}.png", "red_cell_px"] == scale["pixels"]
    # resumed: finished images keep their outputs, their labels are reused for the pool, so an
    # image classified again gets the same scale without segmenting anything again
    (out / "b_summary.json").unlink()
    stamps = {f.name: f.stat().st_mtime_ns for f in out.glob("*_labels.tif")}
    assert main(["analyze", str(inp), "--out", str(out), "--speed", "fast", "--pool-scale"]) == 1
    assert json.loads((out / "cohort_scale.json").read_text())["pixels"] == scale["pixels"]
    assert json.loads((out / "b_summary.json").read_text())["reference_diameter"]["pixels"] == scale["pixels"]
    assert (out / "a_labels.tif").stat().st_mtime_ns == stamps["a_labels.tif"]
    assert "4 images, 2 already done" in (out / "analyze.log").read_text()
    # an image edited since, and a labels file cut short by a killed run, are segmented again
    Image.fromarray(synthetic_smear(seed=4)[0]).save(inp / "a.png")
    (out / "a_summary.json").unlink()
    (out / "c_summary.json").unlink()
    (out / "c_labels.tif").write_bytes((out / "c_labels.tif").read_bytes()[:100])
    assert main(["analyze", str(inp), "--out", str(out), "--speed", "fast", "--pool-scale"]) == 1
    assert (out / "a_labels.tif").stat().st_mtime_ns != stamps["a_labels.tif"]
    assert read_labels_tiff(out / "c_labels.tif")[0].max() > 0
    assert pd.read_csv(out / "cohort.csv").set_index("image").loc["c.png", "status"] == "ok"


def test_scale_hint_suggests_pooling_when_images_lack_red_cells():
    from napari_cytodiffusion.batch import scale_hint

    def row(n, how="whole red cells"):
        return {"status": "ok", "red_cell_from": how, "whole_red_cells": n}

    # cell-centred images: a handful of red cells each
    assert scale_hint([row(5), row(6), row(2, "whole cells"), row(40)]).startswith(
        "note: the images hold 6 whole red cells each (median)"
    )
    assert scale_hint([row(60), row(45), row(4)]) is None  # smears: their own scale is steady
    assert scale_hint([row(3, "given")] * 4 + [{"status": "error"}, row(float("nan"))]) is None


def test_analysis_options_are_checked_before_any_work():
    import pytest

    from napari_cytodiffusion.batch import analysis_options
    from napari_cytodiffusion.errors import InputError
    from napari_cytodiffusion.segmentation.cellpose_seg import SegmentParams

    opts = analysis_options(model="pbc32-fast", speed="fast", segmentation=SegmentParams(platelets=False))
    assert opts["model"] == "pbc32-fast" and opts["segmentation"]["platelets"] is False
    json.dumps(opts)  # plain data: dask sends it to its workers
    for bad, message in [
        (dict(speed="quick"), "unknown speed"),
        (dict(cells="some"), "cells must be"),
        (dict(red_cell_px=-3), "positive number of pixels"),
        (dict(red_cell_px=40, pool_scale=True), "not both"),
    ]:
        with pytest.raises(InputError, match=message):
            analysis_options(**bad)


def test_analyze_by_folder_gives_each_slide_its_own_differential(tmp_path, capsys):
    """Fields of two slides share file names; with --by-folder each slide is analysed on its own."""
    slides = tmp_path / "slides"
    for name, seed in (("patient 1", 1), ("patient 2", 2)):
        (slides / name).mkdir(parents=True)
        Image.fromarray(synthetic_smear(seed=seed)[0]).save(slides / name / "f01.png")
    out = tmp_path / "out"
    assert main(["analyze", str(slides / "patient 1"), str(slides / "patient 2"), "--out", str(out)]) == 2
    assert "would write the same outputs" in capsys.readouterr().err  # one folder: a clash
    assert main(["analyze", str(slides), "--out", str(out), "--by-folder", "--speed", "fast"]) == 0
    said = capsys.readouterr().out
    assert "slide 1/2: patient 1 (1 image)" in said and "slide 2/2: patient 2 (1 image)" in said
    table = pd.read_csv(out / "slides.csv").set_index("slide")
    assert list(table.index) == ["patient 1", "patient 2"]
    for name in table.index:
        folder = out / name
        diff = json.loads((folder / "cohort_differential.json").read_text())
        assert table.loc[name, "white_cells"] == diff["leukocytes"]
        for c, p in diff["percent"].items():  # None without white cells
            assert table.loc[name, f"pct_{c}"] == p or (p is None and pd.isna(table.loc[name, f"pct_{c}"]))
        assert table.loc[name, "alerts"] == "; ".join(diff["alerts"]) or pd.isna(table.loc[name, "alerts"])
        assert (table.loc[name, "images"], table.loc[name, "ok"], table.loc[name, "failed"]) == (1, 1, 0)
        assert (folder / "f01_summary.json").is_file()
        assert (out / table.loc[name, "report"]).is_file()
        row = pd.read_csv(folder / "cohort.csv").iloc[0]
        assert row["path"] == str(slides / name / "f01.png")  # each slide's own field, not the other's
    # the overview links each slide's page; 'report' on the output folder writes them all again
    overview = (out / "report.html").read_text(encoding="utf-8")
    assert (
        "<a href='patient%201/report.html'>patient 1</a>" in overview
        and "patient%202/report.html" in overview
    )
    assert "<a href='../report.html'>← all slides</a>" in (out / "patient 1" / "report.html").read_text(
        encoding="utf-8"
    )
    (out / "patient 2" / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "patient 2" / "report.html").is_file()
    # a re-run goes on where it stopped: nothing left to do, the table kept
    assert main(["analyze", str(slides), "--out", str(out), "--by-folder", "--speed", "fast"]) == 0
    assert "1 images, 1 already done" in (out / "patient 2" / "analyze.log").read_text()
    assert len(pd.read_csv(out / "slides.csv")) == 2


def test_slide_groups_name_each_folder_below_their_common_parent(tmp_path):
    import pytest

    from napari_cytodiffusion.batch import slide_groups
    from napari_cytodiffusion.errors import InputError

    a, b, c = tmp_path / "p1" / "s1", tmp_path / "p2" / "s1", tmp_path / "p2"
    paths = [a / "f1.png", a / "f2.png", b / "f1.png", c / "x.png"]
    groups = slide_groups(paths)
    assert list(groups) == ["p1/s1", "p2/s1", "p2"]
    assert groups["p1/s1"] == paths[:2]
    assert list(slide_groups(paths[:2])) == ["s1"]
    with pytest.raises(InputError, match="would write the same outputs"):
        slide_groups([a / "f1.png", a / "F1.jpg"])
    # a slide may be a folder of links to its fields, wherever those are
    (tmp_path / "data").mkdir()
    (tmp_path / "slides" / "s9").mkdir(parents=True)
    for name in ("u.png", "v.png"):
        (tmp_path / "data" / name).write_bytes(b"")
        (tmp_path / "slides" / "s9" / name).symlink_to(tmp_path / "data" / name)
    assert list(slide_groups(sorted((tmp_path / "slides" / "s9").iterdir()))) == ["s9"]


def test_a_cell_classified_again_alone_keeps_its_numbers():
    """A cell's noise is its own (seeded by its crop): classifying only some cells of a smear again
    gives them the numbers of the full run, whichever cells come before them."""
    from napari_cytodiffusion.pipeline import analyze
    from napari_cytodiffusion.sample_data import generated_smear

    image = generated_smear(seed=0).image
    full = analyze(image, speed="fast", size_check=False)
    done = full.table[full.table["classified"]]
    assert len(done) >= 4
    picked = [int(v) for v in done["label"].to_numpy()[[-1, 1]]]  # the last first, out of their order
    part = analyze(image, labels=full.labels, speed="fast", size_check=False, only_labels=picked)
    cols = ["class", "certainty", "p_correct", "anomaly"]
    a = full.table.set_index("label").loc[picked, cols]
    b = part.table.set_index("label").loc[picked, cols]
    assert (a["class"] == b["class"]).all()
    assert np.allclose(a[cols[1:]].to_numpy(float), b[cols[1:]].to_numpy(float), atol=1e-4)
    others = part.table.set_index("label").drop(index=picked)
    assert not others["classified"].any()  # only the picked cells were classified
