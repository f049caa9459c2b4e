"""Small helpers shared by the sub-commands."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from ..errors import InputError
from ..io.images import IMAGE_SUFFIXES


def out_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"--out {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {p}: {exc.strerror}") from exc
    if not os.access(p, os.W_OK):
        raise InputError(f"output folder {p} is not writable")
    return p


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns → sorted unique image paths."""
    out: list[Path] = []
    for item in items:
        matches = (
            [Path(m) for m in sorted(glob.glob(item))] if any(ch in item for ch in "*?[") else [Path(item)]
        )
        if not matches:
            raise InputError(f"no files match {item}")
        for m in matches:
            if m.is_dir():
                out += sorted(f for f in m.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            elif m.exists():
                out.append(m)
            else:
                raise InputError(f"input not found: {m}")
    if not out:
        raise InputError("no input images")
    seen, uniq = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            uniq.append(p)
    return uniq


def progress(iterable, total: int | None = None, desc: str = ""):
    """tqdm on a terminal, silent otherwise."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


def device_arg(value: str | None) -> str | None:
    if value in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return value
