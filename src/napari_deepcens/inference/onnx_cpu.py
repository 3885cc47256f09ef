"""ONNX Runtime for the dense networks (U-Net, CenterUNet) on CPUs that run them in fp32.

Why: on a 2-core CPU without native bf16, ONNX Runtime's CPU provider runs the bundled U-Net
about 1.3× faster than torch (a 1024² tile: 0.52–0.58 s against 0.68–0.84 s), which brings
the whole segmentation of an image at the training scale from ~1.1 to ~0.85 s/MP
(docs/models.md, "Speed and memory"). Its outputs match torch's within 1e-5.

The network is exported in memory when a predictor first needs it (~0.3 s), from the same
batch-norm-folded module torch would run, so fine-tuned weights gain too. Anything that goes
wrong (ONNX Runtime or ``onnx`` missing, an exporter a future torch no longer has, a session
that will not build) leaves the predictor on torch, with a log line saying why; nothing is
written to disk.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings

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


class OnnxMaps:
    """Runs one tile, (H, W) float32, through the exported network; returns the maps as
    ``model.maps`` does, each (C, h, w) float32 without the batch axis."""

    def __init__(self, session, names: list[str]) -> None:
        self.session, self.names = session, names

    def __call__(self, tile: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(tile[None, None], dtype=np.float32)
        outputs = self.session.run(self.names, {"image": x})
        return {name: out[0] for name, out in zip(self.names, outputs, strict=True)}


def wanted() -> bool:
    """Whether the user left ONNX Runtime allowed (see :data:`RUNTIME_ENV`)."""
    return os.environ.get(RUNTIME_ENV, "auto").strip().lower() != "torch"


def build(model: nn.Module, threads: int) -> OnnxMaps | None:
    """``model`` (a dense network in eval mode, on the CPU, one input channel) exported and
    loaded into an ONNX Runtime session using ``threads`` threads; ``None`` when that is not
    possible here (the reason is logged)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        log.info("ONNX Runtime unavailable (%s): the network runs on torch", exc)
        return None
    try:
        probe = torch.zeros(1, 1, 64, 64)
        with torch.inference_mode():
            names = sorted(model.maps(probe))
        plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # torch's stays
        wrapped = _Maps(plain, names).eval()
        dynamic = {"image": {2: "height", 3: "width"}}
        dynamic.update({name: {2: f"{name}_height", 3: f"{name}_width"} for name in names})
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(wrapped, probe, buffer, input_names=["image"], output_names=names,
                              dynamic_axes=dynamic, opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(int(threads), 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its notes would reach the user's log
        session = ort.InferenceSession(buffer.getvalue(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # any failure only costs speed: torch runs the network
        log.info("ONNX Runtime not used (%s: %s): the network runs on torch",
                 type(exc).__name__, exc)
        return None
    return OnnxMaps(session, names)
