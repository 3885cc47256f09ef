"""napari-deepcens: cell and nucleus instance segmentation for napari.

The public API (no Qt needed)::

    from napari_deepcens import Predictor
    predictor = Predictor.from_name("unet")          # bundled weights
    labels = predictor.segment(image)                # numpy (H, W) int32 instance labels

torch is imported lazily so that napari can read the manifest and sample data quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .inference.predictor import Predictor

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from .inference.predictor import Predictor

        return Predictor
    raise AttributeError(name)
