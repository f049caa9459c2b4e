"""The torch device a run uses: ``auto`` picks one, a name is checked before any work starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

USE = "use auto, cpu, cuda or cuda:N"


def resolve_device(requested: str | None = None) -> torch.device:
    """``None``, ``""`` or ``"auto"``: a CUDA GPU when there is one, else the CPU; otherwise the named device.

    Raises
    ------
    InputError
        For a name torch does not know, or a device this machine or this torch build cannot use
        (e.g. ``cuda`` with the CPU-only build), so a run fails at once with one line rather
        than deep inside the first UNet call.
    """
    import torch

    if requested is None or str(requested).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(requested).strip())
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"unknown device {requested!r}: {USE}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise InputError(f"device {requested!r}: no CUDA GPU is usable here (torch {torch.__version__}, {build}); "
                             "use cpu or auto")  # fmt: skip
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {requested!r}: Apple's MPS is not usable here; use cpu or auto")
    elif dev.type != "cpu":
        raise InputError(f"device {requested!r} is not supported: {USE}")
    return dev


def bf16_autocast_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds up training on ``device``.

    A CUDA GPU: yes. A CPU: only one with native bfloat16 instructions (AVX-512 BF16 or AMX),
    where a training step of the default network takes ~0.6x the float32 time; elsewhere
    bfloat16 is emulated and slower, so training stays float32.
    """
    import torch

    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
