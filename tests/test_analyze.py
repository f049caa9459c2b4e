import json

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
    code = main(["analyze", str(inp), "--out", str(out), "--workers", "2", "--speed", "fast"])
    assert code == 1  # one bad file fails alone
    cohort = pd.read_csv(out / "cohort.csv").set_index("image")
    assert cohort.loc["broken.png", "status"] == "error"
    assert "cannot read" in cohort.loc["broken.png", "error"]
    for s in (1, 2):
        assert cohort.loc[f"smear{s}.png", "status"] == "ok"
        assert cohort.loc[f"smear{s}.png", "n_cells"] >= 40
        for suffix in ("_cells.csv", "_labels.tif", "_summary.json"):
            assert (out / f"smear{s}{suffix}").is_file()
    pooled = json.loads((out / "cohort_domain_check.json").read_text())  # the cells of both smears, pooled
    assert pooled["images"] == 2 and pooled["n"] == cohort["n_scored"].sum() > 0
    assert pooled["n_anomalous"] == cohort["n_anomalous"].sum()
    said = [ln for ln in capsys.readouterr().out.splitlines() if "over 2 images" in ln]
    assert len(said) == 1 and f"{pooled['n_anomalous']} of {pooled['n']}" in said[0]
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
    assert summary["reference_diameter"] == {"pixels": 41.0, "cells": "given"}
    audit = summary["audit"]["parameters"]
    assert audit["size_check"] is False and audit["red_cell_px"] == 41.0
    cohort = pd.read_csv(out / "cohort.csv")  # each image's scale, to compare across one camera's images
    assert cohort["red_cell_px"].tolist() == [41.0] and cohort["red_cell_from"].tolist() == ["given"]
    seg = audit["segmentation"]
    assert seg["platelets"] is False and seg["large_cells"] is False and seg["border_pad"] == 0.15
    table = pd.read_csv(out / f"{field.stem}_cells.csv")
    assert {"size", "size_implausible", "class_by_appearance"} <= set(table.columns)
    assert not table["size_implausible"].any()  # the check was off
