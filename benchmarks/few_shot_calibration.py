"""How to recalibrate an adapted model on few cells: P(correct) fits compared on the same errors.

Uses the adapters written by ``few_shot_adaptation.py`` (same split, same seed): for each K, the
adapted model's diffusion errors are computed once for (a) the calibration cells the adapter was
recalibrated on (up to 10 per class, balanced), (b) up to 50 per class (what ``finetune`` takes by
default), (c) every pool cell not used as a shot (the lab's natural class mix) and (d) the
dataset-1 test cells. Then several recalibrations are fitted and
scored on the test cells:

- ``logistic``: P(correct) = logistic(logit p_max, log margin, anomaly), unpenalised (session 2);
- ``shrunk_L``: the same, with a Gaussian prior of strength L centred on P(correct) = p_max;
- ``temperature_only``: P(correct) = p_max after temperature scaling;

each on the balanced, the up-to-50 and the natural-mix calibration cells. Because the test set is small
(119 cells), the ECE of a *perfectly* calibrated predictor with the same confidences is also
reported (mean over simulated outcomes): the noise floor below which no measured ECE can be trusted.

With ``--repeats R`` (adapters of ``few_shot_adaptation.py --repeats R``: seed 0 in ``ADAPTERS``,
seed s in ``ADAPTERS/seed<s>``) every repeat's own split is replayed and each recalibration is
also scored on the test predictions of all repeats pooled (``pooled``), where the noise floor is
about half as high.

    python benchmarks/few_shot_calibration.py [--adapters runs/fewshot] [--repeats 1]
        [--out runs/fewshot_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def subset(res, idx):
    from napari_cytodiffusion.classify.engine import ErrorResult

    return ErrorResult(
        res.errors[idx],
        res.active[idx],
        res.calls[idx],
        res.unit_timesteps,
        res.unit_weights,
        res.unit_scales,
    )


def scores(p_correct: np.ndarray, correct: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    from napari_cytodiffusion.classify.calibration import ece

    floor = [ece(p_correct, (rng.random(len(p_correct)) < p_correct).astype(float)) for _ in range(500)]
    boot = []
    for _ in range(500):
        i = rng.integers(0, len(p_correct), len(p_correct))
        boot.append(ece(p_correct[i], correct[i]))
    return {
        "ece": round(ece(p_correct, correct), 4),
        "ece_90ci": [round(float(np.quantile(boot, 0.05)), 4), round(float(np.quantile(boot, 0.95)), 4)],
        "ece_if_perfectly_calibrated": round(float(np.mean(floor)), 4),
        "mean_p_correct": round(float(p_correct.mean()), 4),
        "accuracy": round(float(correct.mean()), 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=Path, default=Path("runs/fewshot"))
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--speed", default="balanced")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeats", type=int, default=1, help="replay the repeats of few_shot_adaptation.py --repeats"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/fewshot_calibration.json"))
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(HERE))
    from few_shot_adaptation import stratified_test, wbc_csv

    from napari_cytodiffusion.adapt.finetune import split_shots
    from napari_cytodiffusion.classify.calibration import error_run, fit_calibration
    from napari_cytodiffusion.classify.classifier import finish
    from napari_cytodiffusion.io.datasets import load_single_cell_crops, map_classes, read_labelled
    from napari_cytodiffusion.model.registry import get_model

    torch.set_num_threads(2)
    base = get_model("default")
    pre = base.metadata.preprocessing
    ls = read_labelled(wbc_csv(1, Path(tempfile.mkdtemp())))
    y = map_classes(ls.classes, base.classes)
    x = load_single_cell_crops(ls.paths, pre["size"], pre["single_cell"]["center_crop_fraction"])
    report: dict = {"repeats": {}, "pooled": {}}
    pooled: dict = {}  # (K, variant) -> [(p_correct, correct), ...] over repeats
    for seed in range(args.seed, args.seed + args.repeats):
        folder = args.adapters if seed == args.seed else args.adapters / f"seed{seed}"
        test = stratified_test(y, 0.4, seed)
        pool = np.flatnonzero(~test)
        rng = np.random.default_rng(seed)
        for k in args.shots:
            adapter = folder / f"adapter_k{k}"
            if not adapter.is_dir():
                print(f"skip seed {seed} K={k}: no {adapter}")
                continue
            model = get_model(adapter)
            tr_rel, cal_rel = split_shots(y[pool], k, seed, max_calibration_per_class=10)
            rest = np.setdiff1d(np.arange(len(pool)), tr_rel)  # natural mix: every pool cell not a shot
            pos = {int(c): i for i, c in enumerate(rest)}
            res_rest = error_run(model, x[pool[rest]], speed=args.speed, seed=seed)
            res_test = error_run(model, x[test], speed=args.speed, seed=seed)
            y_rest, y_test = y[pool[rest]], y[test]
            _, cal50 = split_shots(y[pool], k, seed, max_calibration_per_class=50)  # finetune's default
            sets = {
                "balanced": np.array([pos[int(c)] for c in cal_rel]),
                "up_to_50": np.array([pos[int(c)] for c in cal50]),
                "natural_mix": np.arange(len(rest)),
            }
            entry: dict = {
                "n_balanced": int(len(cal_rel)),
                "n_up_to_50": int(len(cal50)),
                "n_natural_mix": int(len(rest)),
                "n_test": int(test.sum()),
            }

            variants: list[tuple[str, dict]] = []
            for set_name, idx in sets.items():
                res_c, y_c = subset(res_rest, idx), y_rest[idx]
                for strength in (0.0, 3.0, 10.0, 30.0):
                    cal = fit_calibration(res_c, y_c, base.metadata.n_classes, prior_strength=strength)
                    variants.append(
                        (f"{set_name}/" + ("logistic" if strength == 0 else f"shrunk_{strength:g}"), cal)
                    )
                cal = fit_calibration(res_c, y_c, base.metadata.n_classes)
                cal.pop("p_correct")
                variants.append((f"{set_name}/temperature_only", cal))
            for name, cal in variants:
                out = finish(res_test, model.classes, cal, 0.0, {})
                ok = (out.pred == y_test).astype(float)
                entry[name] = scores(out.p_correct, ok, rng)
                pooled.setdefault((k, name), []).append((out.p_correct, ok))
            report["repeats"].setdefault(f"seed_{seed}", {})[f"shots_{k}"] = entry
            print(json.dumps({f"seed_{seed}/shots_{k}": entry}, indent=1), flush=True)
    rng = np.random.default_rng(args.seed)
    for (k, name), runs in sorted(pooled.items()):
        pc = np.concatenate([p for p, _ in runs])
        ok = np.concatenate([o for _, o in runs])
        report["pooled"].setdefault(f"shots_{k}", {})[name] = {"repeats": len(runs), **scores(pc, ok, rng)}
    print(json.dumps({"pooled": report["pooled"]}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
