"""Small helpers shared by the sub-commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..io.atomic import writable_folder
from ..io.images import image_paths as expand_inputs  # noqa: F401  (re-exported for the sub-commands)


def out_dir(path: str | os.PathLike) -> Path:
    """``--out``: a writable folder, made if missing."""
    return writable_folder(path)


def progress(iterable, total: int | None = None, desc: str = ""):
    """tqdm on a terminal, silent otherwise."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


def _whole(value: str, least: int) -> int:
    import argparse

    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {n}")
    return n


def count_arg(value: str) -> int:
    """argparse type of a count that must be at least 1 (``--limit``)."""
    return _whole(value, 1)


def seed_arg(value: str) -> int:
    """argparse type of a seed: a whole number, 0 or more (numpy's generators take no negative seed)."""
    return _whole(value, 0)


#: ``--device``'s help
DEVICE_HELP = "torch device: auto (a CUDA GPU when there is one, else cpu), cpu, cuda, cuda:1, ..."


def device_arg(value: str | None) -> str:
    """``--device``: the device to use, checked (auto picks a CUDA GPU when there is one)."""
    from ..devices import resolve_device

    return str(resolve_device(value))


def classify_with_progress(model, crops, desc: str = "classify", **kwargs):
    """:func:`~napari_cytodiffusion.classify.classifier.iter_classify` under a progress bar (on a terminal)."""
    from ..classify.classifier import Classification, Progress, iter_classify

    bar = progress(None, total=len(crops), desc=desc)
    result = None
    for item in iter_classify(model, crops, **kwargs):
        if isinstance(item, Progress):
            bar.n = item.done
            bar.refresh()
        elif isinstance(item, Classification):
            result = item
    bar.close()
    return result
