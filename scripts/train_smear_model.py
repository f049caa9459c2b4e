"""Recipe of the project's Cellpose smear model (``cellpose_smear``).

Data: ``../shared/data/bbbc041`` (BBBC041 images, Hung et al., Broad Bioimage Benchmark
Collection, research use; BBBC041Seg masks, Depto et al. 2021). Binary masks are split
into instances by connected components (touching cells are mostly separated by a thin gap).
Only the ``train`` folder is used; ``val`` is kept for evaluation.

With ``--txl``, the ``train`` split of ``../shared/data/txl_pbc`` (TXL-PBC, Gan & Li 2024, MIT:
Raabin-WBC, BCCD and Kaggle fields with a box for every cell) is added with pseudo-masks: the
ellipse inscribed in each box (``segmentation/pseudo_masks.py``; on BBBC041 val, pseudo-masks made
from the true cells' boxes score AP50 0.998, AP75 0.82, mean Dice 0.92 against the true masks).
Its ``val`` split is kept for evaluation.

Usage::

    # from scratch (session 1, on a GPU)
    python scripts/train_smear_model.py --data ../shared/data/bbbc041 --out runs/cellpose_smear \
        [--epochs 300] [--gpu]
    # fine-tune 1 (session 4, 2-core CPU, 62 min + 9.5 min of flows; checkpoint of epoch 81
    # of 100, written to models/cellpose_smear_fp32 every 20 epochs): from the session-1 weights,
    # TXL-PBC added, at a cell scale of 30 px
    python scripts/train_smear_model.py --txl ../shared/data/txl_pbc --txl-images 200 --init bundled \
        --diam-mean 30 --epochs 100 --nimg-per-epoch 40 --lr 0.003 --flows-cache runs/smear_flows.npz \
        --out runs/smear30
    # the shipped model, fine-tune 2 (session 5, 2-core CPU, 71 min + ~30 min of flows): from
    # fine-tune 1, all 658 TXL-PBC train fields, BBBC041 drawn for 30 % of each epoch
    python scripts/train_smear_model.py --txl ../shared/data/txl_pbc --init bundled --diam-mean 30 \
        --epochs 100 --nimg-per-epoch 32 --lr 0.002 --bbbc-share 0.3 --flows-cache runs/smear_flows.npz \
        --out runs/smear30b

The network is saved in float16 (half the size; loaded back as float32) with its mean
diameter, as ``OUT/cellpose_smear.pt`` plus ``OUT/cellpose_smear.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def load_bbbc041(folder: Path):
    from skimage import io, measure, transform

    from napari_cytodiffusion.io.images import to_rgb_float
    from napari_cytodiffusion.segmentation.channels import smear_channels

    imgs, labels, names = [], [], []
    for f in sorted((folder / "images").glob("*.jpg")):
        m = io.imread(folder / "masks" / (f.stem + ".png"))
        im = to_rgb_float(io.imread(f))
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != im.shape[:2]:
            m = transform.resize(m > 0, im.shape[:2], order=0, preserve_range=True, anti_aliasing=False)
        lab = measure.label(m > 0).astype(np.int32)
        lab = _remove_small(lab, 30)
        imgs.append(np.moveaxis(smear_channels(im), -1, 0))
        labels.append(lab)
        names.append(f.name)
    return imgs, labels, names


def load_txl(folder: Path, split: str = "train", limit: int | None = None, seed: int = 0):
    """TXL-PBC fields with pseudo-masks from their YOLO boxes (``limit``: a random subset)."""
    from skimage import io

    from napari_cytodiffusion.evaluate.segmentation import read_yolo
    from napari_cytodiffusion.io.images import to_rgb_float
    from napari_cytodiffusion.segmentation.channels import smear_channels
    from napari_cytodiffusion.segmentation.pseudo_masks import masks_from_boxes

    imgs, labels, names = [], [], []
    files = sorted((folder / "images" / split).glob("*.jpg"))
    if limit is not None and limit < len(files):
        keep = np.random.default_rng(seed).choice(len(files), limit, replace=False)
        files = [files[i] for i in sorted(keep)]
    for f in files:
        lab_file = folder / "labels" / split / f"{f.stem}.txt"
        if not lab_file.exists():
            continue
        im = to_rgb_float(io.imread(f))
        _, boxes = read_yolo(lab_file, *im.shape[:2])
        lab = _remove_small(masks_from_boxes(im.shape[:2], boxes), 30)
        imgs.append(np.moveaxis(smear_channels(im), -1, 0))
        labels.append(lab)
        names.append(f.name)
    return imgs, labels, names


def cached_flows(labels: list, names: list[str], cache: Path, gpu: bool = False) -> list:
    """Cellpose training flows (4 x H x W per image) for ``labels``, from/to an npz cache."""
    import torch
    from cellpose import dynamics

    device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
    have = {}
    if cache.is_file():
        with np.load(cache) as z:
            have = {k: z[k] for k in z.files}
    missing = [i for i, n in enumerate(names) if n not in have]
    if missing:
        print(f"computing flows for {len(missing)} images", flush=True)
        new = dynamics.labels_to_flows([labels[i] for i in missing], device=device)
        have.update({names[i]: f for i, f in zip(missing, new, strict=True)})
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez_compressed(tmp, **have)
        tmp.replace(cache)
    return [have[n] for n in names]


def _remove_small(lab, min_size):
    from skimage import morphology, segmentation

    lab = morphology.remove_small_objects(lab, min_size)
    return segmentation.relabel_sequential(lab)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/bbbc041"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="use only N images (smoke test)")
    ap.add_argument("--txl", type=Path, default=None, help="add TXL-PBC train fields with box pseudo-masks")
    ap.add_argument(
        "--txl-images", type=int, default=None, help="a random subset of N TXL-PBC fields (flows cost CPU)"
    )
    ap.add_argument(
        "--init", default=None, help="start from weights: 'bundled' (the shipped smear model) or a .pt file"
    )
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default 0.005 CPU / 0.01 GPU)")
    ap.add_argument(
        "--flows-cache",
        type=Path,
        default=None,
        help="npz with the training flows: read when it holds every image, else computed and written "
        "(computing flows for ~300 fields takes ~10 min on a 2-core CPU)",
    )
    ap.add_argument("--nimg-per-epoch", type=int, default=None, help="images drawn per epoch (default all)")
    ap.add_argument(
        "--bbbc-share",
        type=float,
        default=None,
        help="with --txl: share of the images drawn per epoch that are BBBC041 fields (default: in "
        "proportion to their number); keeps the only true masks from being outnumbered by pseudo-masks",
    )
    ap.add_argument(
        "--diam-mean",
        type=float,
        default=None,
        help="cell diameter (px) the network works at; default: median of the BBBC041 cells, or the "
        "--init model's. A smaller scale segments faster (fewer pixels after rescaling)",
    )
    args = ap.parse_args(argv)
    import torch
    from cellpose import models, train

    torch.manual_seed(0)
    np.random.seed(0)
    imgs, labels, names = load_bbbc041(args.data / "train")
    if args.limit:
        imgs, labels, names = imgs[: args.limit], labels[: args.limit], names[: args.limit]
    n_bbbc = len(imgs)
    diams = [np.median(2 * np.sqrt(np.bincount(lab.ravel())[1:] / np.pi)) for lab in labels]
    diam_mean = float(np.median(diams))
    if args.txl:
        t_imgs, t_labels, t_names = load_txl(args.txl, "train", args.txl_images or args.limit)
        imgs, labels, names = imgs + t_imgs, labels + t_labels, names + [f"txl/{n}" for n in t_names]
    if args.flows_cache:
        labels = cached_flows(labels, names, args.flows_cache, args.gpu)
    init_info = None
    if args.init:
        from napari_cytodiffusion.segmentation.cellpose_seg import DEFAULT_SMEAR_MODEL

        init = DEFAULT_SMEAR_MODEL / "cellpose_smear.pt" if args.init == "bundled" else Path(args.init)
        init_info = json.loads((init.parent / "cellpose_smear.json").read_text())
        diam_mean = float(init_info["diam_mean"])  # keep the scale the network was trained at
    if args.diam_mean:
        diam_mean = float(args.diam_mean)
    print(f"{len(imgs)} images ({n_bbbc} BBBC041), cell diameter scale {diam_mean:.1f} px", flush=True)
    train_probs = None
    if args.bbbc_share is not None and len(imgs) > n_bbbc:
        if not 0 < args.bbbc_share < 1:
            ap.error("--bbbc-share must be between 0 and 1")
        n_txl = len(imgs) - n_bbbc
        train_probs = np.array([args.bbbc_share / n_bbbc] * n_bbbc + [(1 - args.bbbc_share) / n_txl] * n_txl)
    model = models.CellposeModel(
        gpu=args.gpu, pretrained_model=False, model_type=None, diam_mean=diam_mean, nchan=2
    )
    if args.init:
        state = torch.load(init, map_location="cpu", weights_only=True)
        model.net.load_state_dict({k: v.float() for k, v in state.items()})
        model.net.diam_mean.data.fill_(diam_mean)  # the state holds the old scale; train at the new one
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    path, train_losses, _ = train.train_seg(
        model.net,
        train_data=imgs,
        train_labels=labels,
        train_probs=train_probs,
        channels=None,
        channel_axis=0,
        normalize=True,
        n_epochs=args.epochs,
        learning_rate=args.lr or (0.005 if not args.gpu else 0.01),
        nimg_per_epoch=args.nimg_per_epoch,
        weight_decay=1e-5,
        batch_size=8,
        bsize=224,
        rescale=True,
        min_train_masks=5,
        save_path=str(args.out),
        model_name="cellpose_smear_fp32",
        save_every=20,  # a fallback checkpoint (``models/cellpose_smear_fp32``) during long CPU runs
    )
    secs = time.time() - t0
    state = {
        k: (v.half() if v.is_floating_point() and "diam" not in k else v)
        for k, v in model.net.state_dict().items()
    }
    torch.save(state, args.out / "cellpose_smear.pt")
    data = (
        "BBBC041 (Hung et al., Broad Bioimage Benchmark Collection, research use) with BBBC041Seg "
        "masks (Depto et al. 2021); train folder, connected components as instances"
    )
    if args.txl:
        data += (
            "; TXL-PBC (Gan & Li 2024, arXiv:2407.13214, MIT) train split, pseudo-masks = ellipses "
            "inscribed in the YOLO boxes"
        )
    hardware = torch.cuda.get_device_name() if args.gpu and torch.cuda.is_available() else "cpu"
    info = {
        "name": "cellpose_smear",
        "architecture": "Cellpose 3 CPnet, nbase [2, 32, 64, 128, 256], trained from scratch",
        "input": "2 channels from RGB: 1 - green (cells), clip(blue - green) (nuclei/platelets)",
        "diam_mean": diam_mean,
        "epochs": args.epochs,
        "train_images": len(imgs),
        "train_seconds": round(secs, 1),
        "final_loss": float(np.mean(train_losses[-10:])),
        "hardware": hardware,
        "data": data,
    }
    if init_info is not None:  # fine-tuned: keep the history of the weights it started from
        info["architecture"] = init_info["architecture"].split("; then fine-tuned")[0] + (
            f"; then fine-tuned {len(init_info.get('history', [])) + 1} time(s) (see history)"
        )
        info["history"] = [
            *init_info.get("history", []),
            {
                k: init_info[k]
                for k in ("epochs", "train_images", "train_seconds", "hardware", "data")
                if k in init_info
            },
        ]
        info["fine_tune"] = {
            "lr": args.lr,
            "nimg_per_epoch": args.nimg_per_epoch,
            "bbbc_share": args.bbbc_share,
            "txl_images": len(imgs) - n_bbbc,
            "epochs": args.epochs,
            "diam_mean_before": float(init_info["diam_mean"]),
        }
    (args.out / "cellpose_smear.json").write_text(json.dumps(info, indent=2) + "\n")
    print(info, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
