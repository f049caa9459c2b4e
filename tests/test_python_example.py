"""The user guide's *From Python* example runs as written, on a smear and a cell image."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "user_guide.md"


def python_example() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("### From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the user guide lost its Python example"
    return match.group(1)


def test_user_guide_python_example_runs(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from napari_cytodiffusion.sample_data import synthetic_smear

    smear, _ = synthetic_smear()
    Image.fromarray(smear).save(tmp_path / "smear.png")
    Image.fromarray(smear[100:200, 100:200]).save(tmp_path / "cell.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_example(), str(GUIDE), "exec"), scope)  # the documented example, as written
    out = capsys.readouterr().out
    assert scope["result"].labels.shape == smear.shape[:2] and len(scope["result"].table) > 10
    assert "segmenting" in out and "classifying" in out  # progress came as Stage items
    assert len(scope["res"]) == 1 and 0 <= float(scope["res"].p_correct[0]) <= 1
    assert scope["cells"].shape == (4, 32, 32, 3) and scope["cells"].dtype == np.uint8
    assert "(4, 32, 32, 3)" in out
    assert scope["cf"].heat.shape == (32, 32) and scope["cf"].class_change >= 0
    assert (tmp_path / "cell_as_eosinophil.png").is_file()
