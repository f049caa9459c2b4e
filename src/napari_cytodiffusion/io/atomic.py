"""Atomic file writes: write to a temporary file beside the target, then rename.

A failed or interrupted export never leaves a half-written file behind, and an existing
file is only replaced once the new content is complete. Python's temporary files are private
(0600, folders 0700); what is moved into place gets the permissions a plain ``open``/``mkdir``
would have given it (the user's umask), or keeps those of the file it replaces, so results on a
shared disk stay readable by the people they were made for.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (read from /proc where possible, so nothing global changes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: the classic set-and-restore
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def public_mode(directory: bool = False) -> int:
    """Permissions a new file (0666) or folder (0777) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A temporary folder inside ``parent`` that, once renamed, looks like a normal ``mkdir``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, public_mode(directory=True))
    return tmp


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed onto ``target``.

    Parameters
    ----------
    target
        Final file path. Its folder must exist or be creatable.
    suffix
        Suffix for the temporary file (defaults to the target's, so writers that
        look at the extension behave the same).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent
        )
    except OSError as exc:
        raise InputError(f"cannot write to {target.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else public_mode()
    except OSError:
        mode = public_mode()
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise InputError(f"could not write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``target``."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN written as null)."""
    return write_text(target, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_with(target: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Atomically create ``target`` by calling ``writer(tmp_path)``."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def _clean(obj: Any) -> Any:
    """Make numpy scalars/arrays and non-finite floats JSON-safe."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def writable_folder(path: str | os.PathLike, name: str = "output folder") -> Path:
    """``path`` as a folder that exists (made if missing) and can be written; ``name`` is how messages call it.

    Raises
    ------
    InputError
        If it is a file, cannot be made, or is not writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{name} {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {name} {p}: {exc.strerror}") from exc
    if not os.access(p, os.W_OK):
        raise InputError(f"{name} {p} is not writable")
    return p
