"""Instances from the U-Net's maps by marker-controlled watershed (scikit-image).

The knobs a user tunes live:

* ``fg_threshold``: foreground probability above which a pixel belongs to some nucleus.
* ``seed_threshold``: normalised-distance level above which a pixel is part of a nucleus's
  core; each connected core is one seed, so raising it splits touching nuclei more eagerly.
* ``min_size``: objects smaller than this many pixels are dropped.

Foreground blobs that hold no seed (very small or faint nuclei) are kept as objects of their
own rather than silently lost. This module is pure numpy/scipy/scikit-image: no torch, no Qt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed


@dataclass(frozen=True)
class WatershedParams:
    """Post-processing knobs (see the module docstring)."""

    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_size: int = 10

    def __post_init__(self) -> None:
        for name in ("fg_threshold", "seed_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be ≥ 0, got {self.min_size}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def remove_small_and_relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects below ``min_size`` pixels and number the rest 1..N (in place, int32)."""
    counts = np.bincount(labels.ravel())
    keep = counts >= max(min_size, 1)
    keep[0] = False
    lookup = np.zeros(counts.size, np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]


def instances_from_maps(
    foreground: np.ndarray, distance: np.ndarray, params: WatershedParams | None = None
) -> np.ndarray:
    """Instance labels (int32, 0 = background) from foreground and distance maps.

    Parameters
    ----------
    foreground : (H, W) foreground probability in [0, 1].
    distance : (H, W) normalised distance in [0, 1] (1 at nucleus centres).
    params : thresholds; defaults when ``None``.
    """
    params = params or WatershedParams()
    if foreground.shape != distance.shape or foreground.ndim != 2:
        raise ValueError(
            f"foreground {foreground.shape} and distance {distance.shape} must be the same 2-D shape"
        )
    mask = foreground > params.fg_threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    seeds = (distance > params.seed_threshold) & mask
    markers, n_seeds = ndi.label(seeds)
    labels = watershed(-distance, markers, mask=mask) if n_seeds else np.zeros(mask.shape, np.int32)
    orphans, n_orphans = ndi.label(mask & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + n_seeds, labels)
    return remove_small_and_relabel(labels.astype(np.int32, copy=False), params.min_size)
