import pytest

from napari_cytodiffusion.cli.main import COMMANDS, main


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: napari-cytodiffusion " + cmd in capsys.readouterr().out


def test_every_option_says_what_it_does():
    """Each sub-command's --help describes every argument (an option without help is a bare flag)."""
    import argparse

    from napari_cytodiffusion.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [
        f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
        for name, parser in sub.choices.items()
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert bare == []


def test_missing_image_is_one_line_exit_2(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "not found" in err


def test_unknown_class_exit_2(tmp_path, capsys):
    code = main(["generate", "--class", "dragon", "-n", "1", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown class 'dragon'" in capsys.readouterr().err


def test_argparse_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--scheduler", "euler", "--class", "all", "--out", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["generate", "--class", "all", "-n", "1", "--out", str(blocker)])
    assert code == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--data", "x", "--out", "o", "--steps", "0"], "steps must be at least 1, got 0"),
        (["train", "--data", "x", "--out", "o", "--batch-size", "0"], "batch size must be at least 1"),
        (["train", "--data", "x", "--out", "o", "--lr", "-1"], "lr must be positive"),
        (["finetune", "--data", "x", "--out", "o", "--rank", "0"], "rank must be at least 1"),
        (["generate", "--class", "all", "--out", "o", "--device", "gpu"], "unknown device 'gpu'"),
        (["evaluate", "--data", "x", "--out", "o", "--limit", "0"], "--limit: must be at least 1"),
        (["demo", "--out", "o", "--seed", "-1"], "--seed: must be at least 0, got -1"),
    ],
)
def test_settings_a_run_cannot_use_are_refused_at_once(args, says, tmp_path, monkeypatch, capsys):
    """Refused before any data is read or model loaded: exit 2 and one line naming the setting."""
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err
    assert not (tmp_path / "o").exists()


def test_a_device_this_machine_lacks_is_named(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from napari_cytodiffusion.devices import resolve_device
    from napari_cytodiffusion.errors import InputError

    assert resolve_device("auto").type == "cpu" and resolve_device(None).type == "cpu"
    assert str(resolve_device(" CPU ".lower())) == "cpu"
    with pytest.raises(InputError, match="no CUDA GPU is usable here"):
        resolve_device("cuda:0")
    for argv in (["classify", "x.png"], ["demo"]):
        code = main([*argv, "--out", str(tmp_path / "o"), "--device", "cuda"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "use cpu or auto" in err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "pixels", "says"),
    [
        ("stack.tif", (3, 40, 40, 3), "stack.tif: expected a 2D grayscale or RGB(A) image"),
        ("dot.png", (1, 1, 3), "dot.png: 1x1 pixels is too small to hold a cell"),
    ],
)
def test_a_single_cell_image_that_cannot_be_a_cell_is_named(name, pixels, says, tmp_path, capsys):
    """Among good images, the one that cannot be cropped is named, and nothing is written."""
    import numpy as np
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    bad = rng.integers(0, 255, pixels, dtype=np.uint8)
    if name.endswith(".tif"):
        tifffile.imwrite(tmp_path / name, bad)
    else:
        Image.fromarray(bad).save(tmp_path / name)
    code = main(["classify", str(tmp_path / "good.png"), str(tmp_path / name), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err
    assert not (tmp_path / "o").exists()
