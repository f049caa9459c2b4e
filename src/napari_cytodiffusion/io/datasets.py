"""Labelled single-cell image sets: a folder of class sub-folders, or a CSV.

CSV: columns ``path,class`` and optionally ``split``; paths are relative to the CSV.
Folder: one sub-folder per class, images inside (recursively).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .images import IMAGE_SUFFIXES


@dataclass
class LabelledSet:
    """Image paths with their class names (as written in the source)."""

    paths: list[Path]
    classes: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.paths)

    def class_names(self) -> list[str]:
        """Distinct class names in first-seen order... sorted for stability."""
        return sorted(set(self.classes), key=str.lower)


def read_labelled(source: str | os.PathLike, split: str | None = None) -> LabelledSet:
    """Read a labelled set from a CSV or a folder of class folders.

    Parameters
    ----------
    source
        CSV file or folder.
    split
        With a CSV that has a ``split`` column, keep only these rows (e.g. "train").
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"data not found: {source}")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise InputError(f"{source.name}: expected a CSV file or a folder of class folders")
        return _read_csv(source, split)
    return _read_folder(source)


def _read_csv(path: Path, split: str | None) -> LabelledSet:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises many parser errors
        raise InputError(f"cannot read {path.name}: {exc}") from exc
    cols = {c.lower().strip(): c for c in df.columns}
    if "path" not in cols or "class" not in cols:
        raise InputError(f"{path.name}: needs columns 'path' and 'class' (found {', '.join(df.columns)})")
    if split is not None:
        if "split" not in cols:
            raise InputError(f"{path.name}: no 'split' column, cannot select split {split!r}")
        df = df[df[cols["split"]].astype(str) == split]
    df = df.dropna(subset=[cols["path"], cols["class"]])
    if df.empty:
        raise InputError(f"{path.name}: no labelled rows" + (f" in split {split!r}" if split else ""))
    root = path.parent
    paths = [root / str(p) for p in df[cols["path"]]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{path.name}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    return LabelledSet(paths=paths, classes=[str(c).strip() for c in df[cols["class"]]], source=path)


def _read_folder(root: Path) -> LabelledSet:
    paths: list[Path] = []
    classes: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        classes += [sub.name] * len(files)
    if not paths:
        raise InputError(f"{root}: no images found in class sub-folders")
    return LabelledSet(paths=paths, classes=classes, source=root)


def map_classes(names: list[str], model_classes: list[str], where: str = "data") -> np.ndarray:
    """Map class names to model indices, case-insensitively; clear error for unknown names."""
    lookup = {c.lower(): i for i, c in enumerate(model_classes)}
    unknown = sorted({n for n in names if n.strip().lower() not in lookup})
    if unknown:
        raise InputError(
            f"{where}: unknown class name(s) {', '.join(unknown)}; the model knows {', '.join(model_classes)}"
        )
    return np.array([lookup[n.strip().lower()] for n in names], dtype=np.int64)


def load_single_cell_crops(
    paths: list[Path], size: int, center_crop_fraction: float, workers: int = 1
) -> np.ndarray:
    """Read and crop single-cell images → (N, size, size, 3) uint8."""
    from ..crops import crop_single_cell
    from .images import read_image

    def one(p: Path) -> np.ndarray:
        return crop_single_cell(read_image(p), size, center_crop_fraction, p.name)

    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            return np.stack(list(ex.map(one, paths)))
    return np.stack([one(p) for p in paths])
