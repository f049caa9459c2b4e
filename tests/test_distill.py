"""Distilling a model into a narrower UNet: the student learns the teacher, resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cytodiffusion.errors import Cancelled, InputError
from napari_cytodiffusion.model.architecture import with_widths
from napari_cytodiffusion.model.distill import DistillConfig, _all_labels, _labels, distill
from napari_cytodiffusion.model.folder import load_model
from napari_cytodiffusion.model.train import learning_rate, prepare_training_data


@pytest.fixture(scope="module")
def teacher_and_data(tiny_model, tiny_dataset):
    teacher = load_model(tiny_model, device="cpu")
    data = prepare_training_data(tiny_dataset, teacher.size, classes=teacher.classes)
    return teacher, data


def _cfg(**kw) -> DistillConfig:
    base = dict(
        steps=30, batch_size=8, labels_per_cell=2, lr=3e-3, warmup_steps=3, checkpoint_every=10, int8=False
    )
    base.update(kw)
    return DistillConfig(**base)


def _gap_to_teacher(student_unet, teacher) -> float:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 3, teacher.size, teacher.size, generator=g)
    t = torch.randint(60, 960, (16,), generator=g)
    y = torch.randint(0, len(teacher.classes) + 1, (16,), generator=g)
    with torch.no_grad():
        return float(
            (
                (student_unet(x, t, class_labels=y).sample - teacher.unet(x, t, class_labels=y).sample) ** 2
            ).mean()
        )


def test_student_is_a_narrower_model_folder_that_approaches_its_teacher(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    out = tmp_path / "student"
    events = list(distill(teacher, data, out, [8, 16], _cfg(steps=60)))
    assert events[-1]["done"] and events[-1]["finished"]
    student = load_model(out, device="cpu")
    assert student.classes == teacher.classes and student.size == teacher.size
    assert list(student.unet.config.block_out_channels) == [8, 16]
    assert student.metadata.training["distilled_from"]["content_hash"] == teacher.metadata.content_hash
    n_student = sum(p.numel() for p in student.unet.parameters())
    assert n_student < 0.5 * sum(p.numel() for p in teacher.unet.parameters())
    from napari_cytodiffusion.model.architecture import build_unet

    torch.manual_seed(0)
    untrained = build_unet(
        len(teacher.classes), with_widths(teacher.metadata.training["recipe"]["arch"], [8, 16])
    )
    assert _gap_to_teacher(student.unet, teacher) < 0.5 * _gap_to_teacher(untrained, teacher)


def test_interrupted_distillation_resumes_exactly(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    whole = tmp_path / "whole"
    list(distill(teacher, data, whole, [8, 16], _cfg(steps=20)))
    part = tmp_path / "part"
    seen = []
    with pytest.raises(Cancelled):
        for ev in distill(teacher, data, part, [8, 16], _cfg(steps=20), should_stop=lambda: len(seen) >= 1):
            seen.append(ev)  # stops after the first progress event (step 10)
    list(distill(teacher, data, part, [8, 16], _cfg(steps=20), resume=True))
    a = load_model(whole, device="cpu").unet.state_dict()
    b = load_model(part, device="cpu").unet.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(InputError, match="not empty"):
        list(distill(teacher, data, part, [8, 16], _cfg()))
    # a checkpoint from before the contrast weight and the lr decay existed resumes without them
    ckpt = part / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["contrast_weight"], state["config"]["min_lr"]
    torch.save(state, ckpt)
    events = list(distill(teacher, data, part, [8, 16], _cfg(steps=22), resume=True))
    resumed = load_model(part, device="cpu").metadata.training
    assert resumed["steps_done"] == 22 and resumed["recipe"]["distillation"]["contrast_weight"] == 0.0
    assert resumed["recipe"]["distillation"]["min_lr"] is None
    assert events[0]["lr"] == pytest.approx(3e-3)  # constant, as that run was started
    # a resumed run's new total cannot be below the steps it has done; None keeps its total
    with pytest.raises(InputError, match="already done 22 steps"):
        list(distill(teacher, data, part, [8, 16], _cfg(steps=12), resume=True))
    assert list(distill(teacher, data, part, [8, 16], _cfg(steps=None), resume=True))[-1]["total"] == 22
    # a checkpoint made from another teacher is refused
    state = torch.load(ckpt, weights_only=False)
    torch.save({**state, "teacher": "0" * 64}, ckpt)
    with pytest.raises(InputError, match="another teacher"):
        list(distill(teacher, data, part, [8, 16], _cfg(steps=30), resume=True))


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    cfg = DistillConfig(steps=1000, lr=1e-3, min_lr=1e-5, warmup_steps=100)
    lrs = np.array([learning_rate(cfg, s) for s in range(1200)])
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:100]) > 0) and np.all(np.diff(lrs[99:1000]) <= 0)
    assert lrs[549] == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-2)  # half-way down
    assert lrs[999] == pytest.approx(1e-5) and np.all(lrs[1000:] == lrs[999])
    cfg.min_lr = None
    assert learning_rate(cfg, 500) == learning_rate(cfg, 1500) == 1e-3


@pytest.mark.parametrize(("n_classes", "k"), [(8, 4), (3, 4), (2, 4)])
def test_labels_are_own_class_then_distinct_others_or_null(n_classes, k):
    rng = np.random.default_rng(0)
    cls = rng.integers(0, n_classes, 200)
    out = _labels(cls, n_classes, k, 0.1, rng)
    assert out.shape == (200, min(k, n_classes))
    assert (out[:, 0] == cls).all()
    for row in out:  # no label twice per cell, the own class never among the others
        assert len(set(row)) == len(row) and row[0] not in row[1:]
    assert 0.02 < np.mean(out[:, 1:] == n_classes) < 0.2  # ~10 % of the extra labels are null


def test_bad_student_widths_and_mismatched_data_are_clear_errors(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    with pytest.raises(InputError, match="one width >= 8 for each of the 2 levels"):
        list(distill(teacher, data, tmp_path / "a", [8, 16, 32], _cfg()))
    with pytest.raises(InputError, match="one width >= 8"):
        list(distill(teacher, data, tmp_path / "b", [4, 16], _cfg()))
    other = type(data)(images=data.images, labels=data.labels, classes=["x", "y"])
    with pytest.raises(InputError, match="differ"):
        list(distill(teacher, other, tmp_path / "c", [8, 16], _cfg()))
    assert not np.any([p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c")])


def test_train_cli_distils_a_model_folder(tiny_model, tiny_dataset, tmp_path):
    from napari_cytodiffusion.cli.main import main

    out = tmp_path / "fast"
    args = ["train", "--data", str(tiny_dataset), "--out", str(out), "--distill-from", str(tiny_model)]
    assert main([*args, "--widths", "8,16", "--steps", "4", "--checkpoint-every", "2", "--no-int8"]) == 0
    meta = load_model(out, device="cpu").metadata
    assert meta.training["steps_done"] == 4 and meta.training["recipe"]["arch"]["block_out_channels"] == [
        8,
        16,
    ]
    assert main([*args, "--resume", "--steps", "6", "--no-int8"]) == 0
    assert load_model(out, device="cpu").metadata.training["steps_done"] == 6
    assert main([*args[:4], str(tmp_path / "x"), *args[5:], "--widths", "8,a"]) == 2
    assert main([*args[:4], str(tmp_path / "y"), *args[5:], "--widths", "8,16,32"]) == 2
    # the model's own widths with a class weight: a classifier fine-tune starting from the model
    own = tmp_path / "own"
    flags = ["--widths", "16,32", "--class-weight", "0.5", "--steps", "2", "--no-int8"]
    assert main([*args[:4], str(own), *args[5:], *flags]) == 0
    recipe = load_model(own, device="cpu").metadata.training["recipe"]["distillation"]
    assert recipe["init_from"] == "teacher" and recipe["class_weight"] == 0.5


def _label_deviation_gap(student_unet, teacher) -> float:
    """How far the student's differences between class labels are from the teacher's."""
    g = torch.Generator().manual_seed(6)
    n, c = 16, len(teacher.classes)
    x = torch.randn(n, 3, teacher.size, teacher.size, generator=g).repeat_interleave(c, 0)
    t = torch.randint(60, 960, (n,), generator=g).repeat_interleave(c, 0)
    y = torch.arange(c).repeat(n)
    with torch.no_grad():
        s = student_unet(x, t, class_labels=y).sample.reshape(n, c, -1)
        r = teacher.unet(x, t, class_labels=y).sample.reshape(n, c, -1)
    return float(((s - s.mean(1, keepdim=True)) - (r - r.mean(1, keepdim=True))).pow(2).mean())


def test_contrast_weight_teaches_the_differences_between_labels(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    gaps = {}
    for w in (0.0, 9.0):
        out = tmp_path / f"w{w}"
        list(distill(teacher, data, out, [8, 16], _cfg(steps=60, contrast_weight=w)))
        gaps[w] = _label_deviation_gap(load_model(out, device="cpu").unet, teacher)
    assert gaps[9.0] < 0.9 * gaps[0.0]  # measured: 0.0018 against 0.0024


def test_a_run_can_start_from_another_runs_weights(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    first = tmp_path / "first"
    list(distill(teacher, data, first, [8, 16], _cfg(steps=10, contrast_weight=0.0)))
    second = tmp_path / "second"
    list(distill(teacher, data, second, [8, 16], _cfg(steps=0, init_from=str(first))))
    a = load_model(first, device="cpu")
    b = load_model(second, device="cpu")
    assert all(torch.equal(v, b.unet.state_dict()[k]) for k, v in a.unet.state_dict().items())
    assert b.metadata.training["steps_before_init"] == 10
    assert b.metadata.training["recipe"]["distillation"]["init_from"] == str(first)
    with pytest.raises(InputError, match="other widths"):
        list(distill(teacher, data, tmp_path / "c", [16, 16], _cfg(init_from=str(first))))
    with pytest.raises(InputError, match="no distillation checkpoint"):
        list(distill(teacher, data, tmp_path / "d", [8, 16], _cfg(init_from=str(tmp_path / "none"))))
    # the teacher itself (fine-tuning it as a classifier): same widths only
    own = tmp_path / "own"
    list(distill(teacher, data, own, [16, 32], _cfg(steps=0, init_from="teacher")))
    t_state = teacher.unet.state_dict()
    assert all(torch.equal(v, t_state[k]) for k, v in load_model(own, device="cpu").unet.state_dict().items())
    with pytest.raises(InputError, match="needs its widths"):
        list(distill(teacher, data, tmp_path / "e", [8, 16], _cfg(init_from="teacher")))


def test_all_labels_are_own_class_then_every_other_then_null():
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 5, 50)
    out = _all_labels(cls, 5, rng)
    assert out.shape == (50, 6) and (out[:, 0] == cls).all() and (out[:, 5] == 5).all()
    assert all(sorted(row[:5]) == list(range(5)) for row in out)


def _own_class_margin(unet, teacher, data) -> float:
    """Mean (other - own) error at the classifier's timesteps, in paired standard deviations."""
    g = torch.Generator().manual_seed(7)
    m, s = (data.images.shape[1] - teacher.size) // 2, teacher.size
    x0 = torch.from_numpy(data.images[:, m : m + s, m : m + s]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    n, c = len(x0), len(teacher.classes)
    ac = teacher.alphas_cumprod()
    margins = []
    for t in (200, 450, 700):
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t]
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * eps).repeat_interleave(c, 0)
        with torch.no_grad():
            pred = unet(xt, torch.full((n * c,), t), class_labels=torch.arange(c).repeat(n)).sample
        err = ((pred.reshape(n, c, -1) - eps.reshape(n, 1, -1)) ** 2).mean(-1)
        own = err[torch.arange(n), torch.as_tensor(data.labels)]
        margins.append(float((err.sum(1) - 2 * own).mean()))  # two classes: other - own
    return float(np.mean(margins))


def test_class_weight_widens_the_own_class_margin(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    start = tmp_path / "start"
    list(distill(teacher, data, start, [8, 16], _cfg(steps=30)))
    margins = {}
    for w in (0.0, 1.0):
        out = tmp_path / f"c{w}"
        list(distill(teacher, data, out, [8, 16], _cfg(steps=40, class_weight=w, init_from=str(start))))
        margins[w] = _own_class_margin(load_model(out, device="cpu").unet, teacher, data)
        assert load_model(out, device="cpu").metadata.training["recipe"]["distillation"]["class_weight"] == w
    assert margins[1.0] > 1.1 * margins[0.0], margins
