"""ONNX Runtime for the dense networks (U-Net, CenterUNet) on CPUs that run them in fp32.

Why: on a 2-core CPU without native bf16, ONNX Runtime's CPU provider runs the whole
segmentation about 1.25× faster than torch (bundled U-Net, 2048² mosaic: ~0.90 against
~1.2 s/MP as is, ~0.66 against ~0.8 s/MP with the size estimate; docs/models.md "Speed and
memory"). Its maps match torch's within 1e-4 (U-Net 1e-6) and the labels are the same.

The network is exported in memory when a predictor first needs it (~0.3 s), from the same
batch-norm-folded module torch would run, so fine-tuned weights gain too; a session is made
per torch thread count (Dask threads run with one thread, the widget with all). Anything that
goes wrong (ONNX Runtime or ``onnx`` missing, a torch whose exporter lacks ``dynamo=False``, a
session that will not build) leaves the predictor on torch, with a log line saying why;
nothing is written to disk.
"""

from __future__ import annotations

import copy
import io
import logging
import os

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: ``torch`` keeps every network on torch (for comparisons, or if ONNX Runtime misbehaves).
RUNTIME_ENV = "NAPARI_DEEPCENS_RUNTIME"


class _Maps(nn.Module):
    """``model.maps`` with its outputs as a tuple in a fixed order (ONNX has no dicts)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.model.maps(x)
        return tuple(maps[name] for name in self.names)


class Exported:
    """A network as ONNX bytes and its output names, ready for :func:`session`."""

    def __init__(self, data: bytes, names: list[str]) -> None:
        self.data, self.names = data, names


class OnnxMaps:
    """Runs one tile, (H, W) float32, through an ONNX Runtime session; returns the maps as
    ``model.maps`` does, each (C, h, w) float32 without the batch axis. Sessions may be run
    from several threads at once."""

    def __init__(self, session, names: list[str], threads: int) -> None:
        self.session, self.names, self.threads = session, names, threads

    def __call__(self, tile: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(tile[None, None], dtype=np.float32)
        outputs = self.session.run(self.names, {"image": x})
        return {name: out[0] for name, out in zip(self.names, outputs, strict=True)}

    def release(self) -> None:
        """Give the session's memory arena back. The arena keeps the buffers of the largest
        tile so far (~0.35 GB for 1024² tiles), which is where the speed comes from (without
        it ONNX Runtime is no faster than torch); an app that keeps predictors between runs
        releases it when idle (the widget: after a quiet minute), and the next run's first
        tile pays for it again."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.session.run(self.names, {"image": np.zeros((1, 1, 16, 16), np.float32)}, options)


def wanted() -> bool:
    """Whether the user left ONNX Runtime allowed (see :data:`RUNTIME_ENV`)."""
    return os.environ.get(RUNTIME_ENV, "auto").strip().lower() != "torch"


def export(model: nn.Module) -> Exported | None:
    """``model`` (a dense network in eval mode, on the CPU, one input channel) as ONNX, or
    ``None`` where that is not possible here (the reason is logged). Not thread-safe (torch's
    exporter keeps global state): callers serialise it."""
    try:
        import onnxruntime  # noqa: F401  (no use exporting for a runtime that is not there)
    except ImportError as exc:
        log.info("ONNX Runtime unavailable (%s): the network runs on torch", exc)
        return None
    try:
        probe = torch.zeros(1, 1, 64, 64)
        with torch.inference_mode():
            names = sorted(model.maps(probe))
        plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # torch's stays
        dynamic = {"image": {2: "height", 3: "width"}}
        dynamic.update({name: {2: f"{name}_height", 3: f"{name}_width"} for name in names})
        buffer = io.BytesIO()
        with torch.no_grad():
            # (its DeprecationWarnings are hidden by Python's default filters; in the widget,
            # only the library's own warnings are shown: widget/workers.py)
            torch.onnx.export(_Maps(plain, names).eval(), probe, buffer, input_names=["image"],
                              output_names=names, dynamic_axes=dynamic, opset_version=17,
                              dynamo=False)
    except Exception as exc:  # any failure only costs speed: torch runs the network
        log.info("ONNX export failed (%s: %s): the network runs on torch", type(exc).__name__, exc)
        return None
    return Exported(buffer.getvalue(), names)


def session(exported: Exported, threads: int) -> OnnxMaps | None:
    """An ONNX Runtime CPU session of ``exported`` using ``threads`` threads, or ``None``
    (logged) when one cannot be made."""
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(int(threads), 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its notes would reach the user's log
        made = ort.InferenceSession(exported.data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        log.info("ONNX Runtime session failed (%s: %s): the network runs on torch",
                 type(exc).__name__, exc)
        return None
    return OnnxMaps(made, exported.names, max(int(threads), 1))
