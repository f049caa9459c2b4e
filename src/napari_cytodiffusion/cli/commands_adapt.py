"""Sub-commands for adapting to a new lab: finetune (LoRA + recalibration) and agreement."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ._common import DEVICE_HELP, device_arg, out_dir, progress, seed_arg


def register(sub) -> None:
    p = sub.add_parser(
        "finetune", help="adapt a model to a new lab with a LoRA adapter trained on a few labelled cells"
    )
    p.add_argument("--model", default="default", help="base model folder or name")
    p.add_argument("--data", required=True, help="folder of class sub-folders, or CSV path,class[,split]")
    p.add_argument("--out", required=True, help="adapter folder to create")
    p.add_argument("--shots", type=int, default=10, help="training cells per class; the rest recalibrate")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--steps", type=int, default=200, help="training steps of the adapter")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate of the adapter")
    p.add_argument("--split", default=None, help="with a CSV: use only rows of this split")
    p.add_argument(
        "--new-classes", action="store_true", help="add the data's classes that the base model lacks"
    )
    p.add_argument("--calibration-cells", type=int, default=50, help="at most this many per class")
    p.add_argument(
        "--generative-only", action="store_true", help="denoising loss only (no classification term)"
    )
    p.add_argument(
        "--seed",
        type=seed_arg,
        default=0,
        help="seed of the split into shots and calibration cells, and of training",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "agreement",
        help="agreement between a user's labels and the model's calls (silent-mode pilot report)",
    )
    p.add_argument("--cells", required=True, help="cells CSV with the model's 'class' and the user's labels")
    p.add_argument("--user-column", default="corrected_class", help="column holding the user's labels")
    p.add_argument("--out", required=True, help="output folder: agreement.json, agreement.png")
    p.set_defaults(func=cmd_agreement)


def cmd_finetune(a) -> int:
    from ..adapt.finetune import FinetuneConfig, iter_finetune_data, prepare_finetune_data
    from ..model.registry import get_model

    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not an empty folder")
    out_dir(out.parent if str(out.parent) else ".")
    cfg = FinetuneConfig(
        rank=a.rank,
        steps=a.steps,
        lr=a.lr,
        seed=a.seed,
        discriminative_weight=0.0 if a.generative_only else 1.0,
    )
    model = get_model(a.model, device=device_arg(a.device))
    data = prepare_finetune_data(
        model, a.data, a.shots, a.split, a.new_classes, a.seed, max(0, a.calibration_cells)
    )
    print(
        f"fine-tuning {model.short_id()} on {len(data.train_labels)} cells "
        f"({a.shots} per class), recalibrating on {len(data.cal_labels)}"
    )
    bar = progress(None, total=cfg.steps, desc="finetune")
    last = None
    for ev in iter_finetune_data(model, data, out, cfg):
        if ev["stage"] == "finetune":
            bar.n = ev["step"]
            bar.set_postfix(loss=f"{ev['loss']:.4f}")
            bar.refresh()
        last = ev
    bar.close()
    from ..adapt.adapter import read_adapter_metadata

    meta = read_adapter_metadata(last["adapter_dir"])
    size_kb = sum(f.stat().st_size for f in Path(last["adapter_dir"]).iterdir()) / 1024
    print(
        json.dumps(
            {
                "adapter": last["adapter_dir"],
                "size_kb": round(size_kb, 1),
                "train_seconds": meta["finetune"]["train_seconds"],
                "classes": meta["classes"],
                **meta.get("validation", {}),
            },
            indent=1,
        )
    )
    return 0


def cmd_agreement(a) -> int:
    import pandas as pd

    from ..evaluate.agreement import agreement_png, agreement_report
    from ..io.atomic import write_json

    path = Path(a.cells)
    if not path.is_file():
        raise InputError(f"cells CSV not found: {path}")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises many parser errors
        raise InputError(f"cannot read {path.name}: {exc}") from exc
    out = out_dir(a.out)
    report = agreement_report(table, user_column=a.user_column)
    write_json(out / "agreement.json", report)
    agreement_png(report, out / "agreement.png")
    print(json.dumps({k: report[k] for k in ("n", "agreement", "cohens_kappa", "flagged_share")}, indent=1))
    return 0
