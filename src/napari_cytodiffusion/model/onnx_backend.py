"""ONNX Runtime inference of the UNet on a CPU (optional: ``pip install napari-cytodiffusion[onnx]``).

The classifier spends nearly all its time in UNet calls of 64 small images. On a CPU, ONNX
Runtime runs the same network faster than eager PyTorch (see ``benchmarks/unet_backends.py``), so
when ``onnxruntime`` and ``onnx`` are installed the classifier and the samplers use it on CPU. The
network is exported once per set of weights into the cache directory
(``$NAPARI_CYTODIFFUSION_CACHE/onnx/``, keyed by a hash of the weights, so adapters get their own
file) and reused afterwards. Training and fine-tuning always use PyTorch.

A model folder may also hold an int8 version of its UNet (convolutions quantized, see
:mod:`napari_cytodiffusion.model.quantize`; the default model ships one). On a 2-core CPU a UNet
evaluation costs 4.1 ms instead of 5.5 ms (classification 1.2x faster) at nearly the same accuracy,
and ``auto`` prefers it.

The int8 network's errors depend on the CPU, and so do the classifier constants fitted on them. A
folder whose int8 constants record the machine they were fitted on (``extra["int8"]["numerics"]``,
:mod:`.int8_numerics`) has its int8 UNet used only where this CPU computes it alike; elsewhere
``auto`` runs the float32 network.

``NAPARI_CYTODIFFUSION_BACKEND=torch`` turns ONNX Runtime off; ``=onnx`` requires float32 ONNX
Runtime, ``=int8`` the folder's int8 file (an error if it cannot be used); ``auto`` (default)
uses int8, else float32 ONNX, else PyTorch, whichever it can first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import ModelError

BACKEND_ENV = "NAPARI_CYTODIFFUSION_BACKEND"
BACKENDS = ("auto", "torch", "onnx", "int8")
log = logging.getLogger(__name__)


def backend_choice() -> str:
    """The backend asked for in ``$NAPARI_CYTODIFFUSION_BACKEND`` (``auto`` when unset)."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ModelError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ONNX package (needed by the exporter) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def weights_hash(unet) -> str:
    """sha256 over the UNet's config and parameters (identifies the exported file)."""
    h = hashlib.sha256(repr(sorted(dict(unet.config).items())).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _plain_module(unet):
    """``unet(x, t, class_labels).sample`` as a module with positional inputs, for the exporter."""
    import torch

    class Plain(torch.nn.Module):
        def __init__(self, u) -> None:
            super().__init__()
            self.u = u

        def forward(self, x, t, c):
            return self.u(x, t, class_labels=c).sample

    return Plain(unet)


def export_onnx(unet, path: str | os.PathLike) -> Path:
    """Export the UNet to ONNX (dynamic batch), written atomically to ``path``."""
    import torch

    from ..io.atomic import atomic_path

    size = int(unet.config.sample_size)
    channels = int(unet.config.in_channels)
    wrapped = _plain_module(unet).eval()
    args = (
        torch.zeros(2, channels, size, size),
        torch.tensor([10, 500], dtype=torch.int64),
        torch.tensor([0, 1], dtype=torch.int64),
    )
    path = Path(path)
    with (
        atomic_path(path) as tmp,
        torch.inference_mode(False),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        # the tracer warns about shape checks in diffusers' blocks; they hold for every batch size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            args,
            str(tmp),
            input_names=["x", "t", "c"],
            output_names=["eps"],
            dynamic_axes={k: {0: "batch"} for k in ("x", "t", "c", "eps")},
            opset_version=17,
            dynamo=False,
        )
    return path


class OrtUNet:
    """Callable like a diffusers UNet for inference: ``unet(x, t, class_labels=c).sample``.

    With ``workers`` > 1, the network runs in that many single-threaded ONNX Runtime sessions
    and a batch is split between them, run side by side (ONNX Runtime releases the GIL). For a
    network this small that beats one session using every thread: on the 2-core CPU, batches of
    32 cost 4.39 ms per evaluation in two single-threaded sessions against 5.10 ms in one session
    of two threads (medians of 8 interleaved rounds, shipped int8 UNet). By default there is one
    session per thread, up to 4 (not measured beyond 2 cores).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        backend: str = "onnx",
        workers: int | None = None,
    ) -> None:
        import torch

        threads = max(1, int(threads or torch.get_num_threads()))
        self.workers = max(1, min(int(workers or min(threads, 4)), threads))
        per_session = max(1, threads // self.workers)
        self.path = Path(path)
        self.backend = backend
        self.sessions = [self._session(path, per_session) for _ in range(self.workers)]
        self.session = self.sessions[0]
        self._pool = None
        self._pool_pid = None

    def _executor(self):
        """The thread pool, made on first use (and again in a forked child, which has no threads)."""
        if self._pool is None or self._pool_pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cytodiffusion-ort")
            self._pool_pid = os.getpid()
        return self._pool

    @staticmethod
    def _session(path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x, t, class_labels=None) -> SimpleNamespace:
        import numpy as np
        import torch

        n = x.shape[0]
        t = torch.as_tensor(t).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        xs = np.ascontiguousarray(x.detach().float().cpu().numpy())
        ts = t.detach().cpu().numpy().astype(np.int64)
        cs = class_labels.detach().cpu().numpy().astype(np.int64)
        parts = min(self.workers, max(1, n // 8))  # tiny batches are not worth splitting
        if parts == 1:
            out = self.session.run(None, {"x": xs, "t": ts, "c": cs})[0]
        else:
            bounds = np.linspace(0, n, parts + 1).astype(int)
            pool = self._executor()
            jobs = [
                pool.submit(s.run, None, {"x": xs[a:b], "t": ts[a:b], "c": cs[a:b]})
                for s, a, b in zip(self.sessions, bounds[:-1], bounds[1:], strict=False)
            ]
            out = np.concatenate([j.result()[0] for j in jobs])
        return SimpleNamespace(sample=torch.from_numpy(out))


def backend_name(model) -> str:
    """``torch``, ``onnx`` or ``onnx-int8``: what :func:`inference_unet` runs for ``model``."""
    return getattr(inference_unet(model), "backend", "torch")


def inference_unet(model) -> Any:
    """The network to run inference with: ONNX Runtime on a CPU when available, else the UNet.

    The choice is made once per loaded model and kept on it.
    """
    cached = getattr(model, "_inference_unet", None)
    if cached is not None:
        return cached
    net = _choose(model, backend_choice())
    model._inference_unet = net
    return net


def _int8_numerics_hold(model, net, choice: str) -> bool:
    """Whether the int8 constants of ``model`` hold on this CPU (see :mod:`.int8_numerics`).

    A folder without int8 constants, or without a record of the machine that fitted them, uses
    the int8 network as before. Where this CPU computes it differently, ``auto`` falls back to
    float32 (whose constants hold everywhere); ``int8`` keeps it, as asked, with a warning.
    """
    stored = (model.metadata.extra.get("int8") or {}).get("numerics")
    if not stored:
        return True
    from . import int8_numerics

    dev = int8_numerics.deviation(stored, net, model.size, model.metadata.n_classes)
    model.int8_deviation = dev
    if dev <= float(stored.get("tolerance", int8_numerics.TOLERANCE)):
        return True
    host = stored.get("host", {})
    msg = (
        f"{model.short_id()}: this CPU computes the int8 UNet differently from the machine its int8 "
        f"constants were fitted on ({host.get('machine', '?')}, {' '.join(host.get('cpu_flags', [])) or 'no flags'}; "
        f"largest probe difference {dev:.2g})"
    )
    if choice == "int8":
        log.warning("%s; using it as asked: probabilities and flags may be less well calibrated", msg)
        return True
    log.warning("%s; using the float32 network, whose constants hold here", msg)
    return False


def _export_key(model) -> str:
    """Name of the float32 export: the verified content hash of a model folder (no UNet needed),
    else a hash of the weights in memory (adapters, unsaved models)."""
    if getattr(model, "verified", False) and model.metadata.content_hash:
        return f"unet-c{model.metadata.content_hash[:20]}"
    return f"unet-{weights_hash(model.unet)[:20]}"


def _choose(model, choice: str) -> Any:
    on_cpu = model.device.type == "cpu"
    if choice == "torch" or (choice == "auto" and not on_cpu):
        return model.unet
    if not on_cpu:
        raise ModelError(f"{BACKEND_ENV}={choice} runs on a CPU only; this model is on {model.device}")
    if not onnx_available():
        if choice in ("onnx", "int8"):
            raise ModelError(
                f"{BACKEND_ENV}={choice}, but onnxruntime/onnx are not installed: "
                "pip install 'napari-cytodiffusion[onnx]'"
            )
        return model.unet
    if choice in ("auto", "int8"):
        from .quantize import int8_file

        path = int8_file(model)
        if path is not None:
            net = OrtUNet(path, backend="onnx-int8")
            if _int8_numerics_hold(model, net, choice):
                return net
        if choice == "int8":
            raise ModelError(
                f"{BACKEND_ENV}=int8, but {model.short_id()} has no int8 UNet for its weights "
                "(napari-cytodiffusion train makes one; see model/quantize.py)"
            )
    from ..paths import cache_dir

    path = cache_dir() / "onnx" / f"{_export_key(model)}.onnx"
    try:
        if not path.is_file():
            log.info("exporting the UNet to %s (once per model)", path)
            export_onnx(model.unet, path)
        return OrtUNet(path)
    except Exception as exc:  # exporter/runtime failures: fall back to PyTorch unless asked for
        if choice == "onnx":
            raise ModelError(f"cannot run the UNet with ONNX Runtime: {type(exc).__name__}: {exc}") from exc
        log.warning("ONNX Runtime unavailable for this model (%s); using PyTorch", exc)
        return model.unet
