"""Instances from the U-Net's maps by marker-controlled watershed (scikit-image).

The knobs a user tunes live:

* ``fg_threshold``: foreground probability above which a pixel belongs to some nucleus.
* ``seed_threshold``: how far a peak of the (lightly smoothed) normalised-distance map must
  rise above the saddle to its neighbours to seed a nucleus of its own (h-maxima). Lower
  values split touching nuclei more eagerly; higher values merge more. A prominence, unlike a
  level, does not depend on how confident the network is overall, which measured better on
  the validation split (docs/models.md).
* ``min_size``: objects smaller than this many pixels are dropped.

Foreground blobs that hold no seed (very small or faint nuclei) are kept as objects of their
own rather than silently lost. This module is pure numpy/scipy/scikit-image: no torch, no Qt.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .params import PostprocessParams

#: Gaussian σ (pixels) applied to the distance map before finding seeds: removes single-pixel
#: ripples that would otherwise each seed a fragment.
SMOOTHING = 1.0
#: Seeds are searched on the distance map averaged over PEAK_BLOCK × PEAK_BLOCK pixels.
PEAK_BLOCK = 4


def remove_small_and_relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects below ``min_size`` pixels and number the rest 1..N (in place, int32)."""
    counts = np.bincount(labels.ravel())
    keep = counts >= max(min_size, 1)
    keep[0] = False
    lookup = np.zeros(counts.size, np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]


def prominent_peaks(relief: np.ndarray, height: float, block: int = 4) -> np.ndarray:
    """Peaks of ``relief`` rising at least ``height`` above their surroundings (h-maxima).

    Computed on a ``block``²-averaged copy and expanded back: the distance map is smooth
    at that scale and h-maxima is the slowest step of a slider move. On val, blocks of 4 vs 2
    change DSB by < 0.002 and make this step four times cheaper.
    """
    f = max(int(block), 1)
    h, w = relief.shape
    padded = np.pad(relief, ((0, (-h) % f), (0, (-w) % f)), mode="edge")
    small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).mean(axis=(1, 3))
    peaks = h_maxima(small, max(height, 1e-3)).astype(bool)
    return np.repeat(np.repeat(peaks, f, axis=0), f, axis=1)[:h, :w]


def instances_from_maps(
    foreground: np.ndarray,
    distance: np.ndarray,
    params: PostprocessParams | None = None,
    object_scale: float = 1.0,
) -> np.ndarray:
    """Instance labels (int32, 0 = background) from foreground and distance maps.

    Parameters
    ----------
    foreground : (H, W) foreground probability in [0, 1].
    distance : (H, W) normalised distance in [0, 1] (1 at nucleus centres).
    params : thresholds; defaults when ``None``.
    object_scale : size of the objects relative to the training size (the inverse of the zoom
        the network ran at). Smoothing and the seed search block follow it, so 4-px nuclei are
        not blurred together and 80-px nuclei do not seed twice.
    """
    params = params or PostprocessParams()
    if foreground.shape != distance.shape or foreground.ndim != 2:
        raise ValueError(
            f"foreground {foreground.shape} and distance {distance.shape} must be the same 2-D shape"
        )
    mask = foreground > params.fg_threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    relief = ndi.gaussian_filter(distance.astype(np.float32, copy=False), SMOOTHING * object_scale)
    relief[~mask] = 0.0
    block = round(PEAK_BLOCK * object_scale)
    seeds = prominent_peaks(relief, params.seed_threshold, block) & mask
    markers, n_seeds = ndi.label(seeds)
    labels = watershed(-relief, markers, mask=mask) if n_seeds else np.zeros(mask.shape, np.int32)
    orphans, n_orphans = ndi.label(mask & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + n_seeds, labels)
    return remove_small_and_relabel(labels.astype(np.int32, copy=False), params.min_size)
