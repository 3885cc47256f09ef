"""Keep triton out of a napari process.

Every torch optimizer imports ``torch._dynamo``, which imports triton when it is installed (it
comes with CUDA builds of torch). triton's bundled LLVM segfaults the process when it loads
after the OpenGL driver's own LLVM (Mesa llvmpipe), which napari has loaded by the time anyone
trains. Nothing here compiles kernels, so in a process that runs Qt we make ``import triton``
fail cleanly instead; torch then simply runs without it. Command-line runs are left alone.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)
_QT_BINDINGS = ("PyQt6", "PyQt5", "PySide6", "PySide2")


def block_triton_in_gui_process() -> None:
    """Make ``import triton`` raise ImportError if Qt is loaded and triton is not yet."""
    if "triton" in sys.modules or not any(m in sys.modules for m in _QT_BINDINGS):
        return
    sys.modules["triton"] = None  # type: ignore[assignment]
    log.info("triton disabled in this GUI process (it crashes next to the OpenGL driver)")
