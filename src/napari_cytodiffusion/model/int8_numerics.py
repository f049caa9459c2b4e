"""Does this CPU compute the int8 UNet the way the machine that fitted its constants did?

A model folder's int8 UNet has its own classifier constants (temperature, P(correct), anomaly
profile: ``extra["int8"]["classifier_calibration"]``), fitted on the int8 network's errors. Those
errors depend on the CPU as well as on the file. Integer kernels differ between x86 CPUs with and
without VNNI (the older ones can saturate intermediate sums) and between x86 and ARM. Seen here:
on one machine the shipped constants of ``pbc32-fast`` gave PBC val a P(correct) ECE of 0.016 and
79 % of cells at P(correct) >= 0.95. On another machine (with VNNI and AMX) the same files, cells
and code gave 0.040 and 61 %, and 0.4 points less accuracy.

So the machine that fits int8 constants also records a *fingerprint*: 64 output values of the
int8 UNet on a fixed probe input (seeded noise at 8 timesteps and classes). Before the int8
network is used with those constants, the fingerprint is recomputed (one UNet call of 8 inputs).
Where it differs by more than the tolerance, the float32 network is used instead: its constants
(``calibration``) hold on every machine, up to float rounding.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

PROBE_SEED = 20261203
N_PROBE = 8
N_VALUES = 64
#: float parts of the int8 graph (attention, normalisation) may round differently between CPUs by
#: ~1e-6; what changes the classifier's errors is far larger
TOLERANCE = 1e-3


def _probe(size: int, n_classes: int):
    import torch

    rng = np.random.default_rng(PROBE_SEED)
    x = rng.standard_normal((N_PROBE, 3, size, size)).astype(np.float32)
    t = np.linspace(50, 950, N_PROBE).round().astype(np.int64)
    c = (np.arange(N_PROBE) % max(1, n_classes)).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(c)


def fingerprint(net, size: int, n_classes: int) -> list[float]:
    """64 output values of ``net`` (an ONNX Runtime UNet) on the fixed probe input."""
    x, t, c = _probe(size, n_classes)
    out = net(x, t, class_labels=c).sample.float().numpy().ravel()
    idx = np.sort(np.random.default_rng(PROBE_SEED + 1).choice(out.size, N_VALUES, replace=False))
    return [round(float(v), 6) for v in out[idx]]


def host() -> dict[str, Any]:
    """What decides how the int8 kernels compute: architecture, integer dot-product extensions."""
    import onnxruntime

    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    flags = sorted(
                        have & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
                    )
                    break
    except OSError:  # not Linux: the architecture alone
        pass
    return {"machine": platform.machine(), "cpu_flags": flags, "onnxruntime": onnxruntime.__version__}


def record(net, size: int, n_classes: int) -> dict[str, Any]:
    """The ``numerics`` entry stored beside int8 constants fitted on this machine."""
    return {
        "probe_seed": PROBE_SEED,
        "values": fingerprint(net, size, n_classes),
        "tolerance": TOLERANCE,
        "host": host(),
    }


def deviation(stored: dict[str, Any], net, size: int, n_classes: int) -> float:
    """Largest difference between this machine's probe outputs and the stored ones."""
    if int(stored.get("probe_seed", -1)) != PROBE_SEED:
        return float("inf")
    now = np.asarray(fingerprint(net, size, n_classes))
    ref = np.asarray(stored.get("values", []), float)
    return float(np.abs(now - ref).max()) if ref.shape == now.shape else float("inf")


def matches(stored: dict[str, Any], net, size: int, n_classes: int) -> bool:
    return deviation(stored, net, size, n_classes) <= float(stored.get("tolerance", TOLERANCE))
