"""Cell outlines that follow the cytoplasm stain.

A detector's masks are probabilities on a coarse grid, drawn by a network that learnt cells
from a few fields: their outlines are loose, and where a cell's edge lies is plainly visible in
its stain. :func:`follow_stain` moves each outline onto the stain, CellProfiler's
"propagation" idea with the network's masks as seeds:

1. each cell's mask, eroded by :data:`ERODE` nucleus diameters, seeds a watershed of the
   (lightly smoothed) stain, so touching cells meet along the darkest valley between them
   (an outline can thus move inwards by up to that depth, outwards by up to :data:`GROW`);
2. the watershed may reach a little beyond the network's masks (:data:`GROW` nucleus
   diameters), never further: a cell cannot run away into its neighbour's debris;
3. each cell keeps the pixels brighter than ``edge`` of the way from the background to its
   own median brightness: a dim cell is outlined at its own edge, not a bright neighbour's.

Lengths are in nucleus diameters (the model's size knob), so the step does the same at any
magnification. Labels keep their numbers (label ``i`` stays the same detection) and no cell is
lost: its seed always stays. A cell no brighter than the background's noise (nothing to follow)
keeps the network's mask. Pure numpy/scipy/scikit-image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

#: How far (nucleus diameters) an outline may move beyond the network's mask.
GROW = 0.4
#: How deep (nucleus diameters) the network's mask is eroded to seed its cell.
ERODE = 0.15
#: Gaussian σ (nucleus diameters) smoothing the stain: camera noise must not draw the edge.
SMOOTH = 0.04
#: Resolution of the per-cell medians (histogram bins over the cells' brightness range).
BINS = 256
#: A cell whose median is within this many noise σ of the background has no edge to follow.
FLAT_NOISE = 3.0
#: Below this many pixels outside every cell's reach, the background is the stain's 1st
#: percentile instead of their median (a field packed with cells).
MIN_BACKGROUND_PIXELS = 1000


def _seeds(labels: np.ndarray, depth: int) -> np.ndarray:
    """Each label eroded by ``depth`` pixels; a label too thin for that keeps its whole mask."""
    seeds = np.zeros_like(labels)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        inner = ndi.binary_erosion(mask, iterations=depth)
        seeds[box][inner if inner.any() else mask] = index
    return seeds


def _medians(values: np.ndarray, labels: np.ndarray, n: int,
             missing: float) -> tuple[np.ndarray, float]:
    """Median of ``values`` under each label 1..n, to 1/:data:`BINS` of their range (a histogram
    per label: linear time, where ``ndimage.median`` sorts), ``missing`` for numbers not in
    use; and that resolution (the histogram's bin width)."""
    inside = labels > 0
    medians = np.full(n, missing, np.float64)
    if not inside.any():
        return medians, 0.0
    ids, which = np.unique(labels[inside], return_inverse=True)  # any numbering
    lo, hi = float(values[inside].min()), float(values[inside].max())
    step = max(hi - lo, 1e-12) / BINS
    bins = np.minimum(((values[inside] - lo) / step).astype(np.int64), BINS - 1)
    counts = np.bincount(which.ravel() * BINS + bins, minlength=ids.size * BINS).reshape(-1, BINS)
    cumulative = counts.cumsum(axis=1)
    middle = (cumulative < (cumulative[:, -1:] + 1) / 2).sum(axis=1)  # bin holding the median
    medians[ids - 1] = lo + (middle + 0.5) * step
    return medians, step


def smooth_stain(stain: np.ndarray, diameter: float) -> np.ndarray:
    """The stain as :func:`follow_stain` reads it: smoothed by :data:`SMOOTH` nucleus
    diameters (``diameter`` in pixels of its grid), so camera noise does not draw the edge.
    Done once per image, when the network runs, not at every slider move."""
    sigma = max(SMOOTH * max(float(diameter), 1.0), 0.5)
    return ndi.gaussian_filter(np.asarray(stain, np.float32), sigma)


def follow_stain(labels: np.ndarray, smooth: np.ndarray, diameter: float,
                 edge: float) -> np.ndarray:
    """``labels`` (cells of one class) with their outlines moved onto their stain.

    ``smooth``: the cells' stain on the same grid, from :func:`smooth_stain` (any scale: only
    its ranking matters). ``diameter``: nucleus diameter in pixels of this grid. ``edge``:
    where, from the background (0) to the cell's median brightness (1), its outline is drawn;
    0 returns ``labels``.
    """
    if edge <= 0 or not labels.any():
        return labels
    if smooth.shape != labels.shape:
        raise ValueError(f"stain {smooth.shape} and labels {labels.shape} differ in shape")
    d = max(float(diameter), 1.0)
    smooth = smooth.astype(np.float32, copy=False)
    reach = ndi.distance_transform_edt(labels == 0) <= max(round(GROW * d), 1)
    outside = smooth[~reach]
    if outside.size >= MIN_BACKGROUND_PIXELS:
        background = float(np.median(outside))
        noise = 1.4826 * float(np.median(np.abs(outside - background)))
    else:
        background, noise = float(np.percentile(smooth, 1)), 0.0
    n = int(labels.max())
    medians, step = _medians(smooth, labels, n, background)
    # a cell no brighter than the background's noise (or than the medians' resolution, for a
    # stain without noise) has no edge in this stain: it keeps its mask
    flat = np.concatenate([[False], medians <= background + max(FLAT_NOISE * noise, step)])
    cut = np.concatenate([[np.inf], background + edge * (medians - background)])
    # seeds: the masks' cores, kept whole (trimming them to the bright stain measured worse:
    # a cytoplasm stain is often dim over the nucleus, and a trimmed seed falls apart)
    seeds = _seeds(labels, max(round(ERODE * d), 1))
    grown = watershed(-smooth, seeds, mask=reach | (seeds > 0))
    keep = (smooth > cut[grown]) | (seeds > 0)
    grown = np.where(keep & ~flat[grown], grown, 0)
    grown = np.where((grown == 0) & flat[labels], labels, grown)
    # each cell: the part connected to its seed, holes filled where nothing else lies
    out = np.zeros_like(labels)
    for index, box in enumerate(ndi.find_objects(grown), start=1):
        if box is None:
            continue
        mask = grown[box] == index
        parts, count = ndi.label(mask)
        if count > 1:
            held = np.unique(parts[mask & (seeds[box] == index)])
            held = held[held > 0]
            mask = np.isin(parts, held) if held.size else mask
        mask = ndi.binary_fill_holes(mask) & ((grown[box] == 0) | mask)
        out[box][mask & (out[box] == 0)] = index
    return out
