"""CenterUNet decoding: heatmap peaks → rotated boxes; seeded watershed → instances.

Peaks of the 1/4-resolution centre heatmap above ``score_threshold`` (local maxima in a 3×3
window, CenterNet's NMS) become detections; the size, offset and angle maps are read at the
peak. Each detection whose centre lies on the segmentation mask seeds the watershed of that
mask, so every instance is tied to exactly one box: label ``i`` ↔ detection ``i - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .params import PostprocessParams
from .watershed import flood_components

BOX_COLUMNS = ("label", "score", "cx", "cy", "width", "height", "angle_deg")


@dataclass
class Detections:
    """N rotated boxes in pixels (x = column, y = row), sorted by decreasing score."""

    cx: np.ndarray
    cy: np.ndarray
    width: np.ndarray
    height: np.ndarray
    angle_deg: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.score.size)

    def take(self, index: np.ndarray) -> Detections:
        return Detections(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def scaled_xy(self, fx: float, fy: float) -> Detections:
        """The same boxes on a grid ``fx`` times wider and ``fy`` times taller (a zoom
        rounded to whole pixels differs a little between the axes); sizes by the mean."""
        mean = float(np.sqrt(fx * fy))
        return Detections(self.cx * fx, self.cy * fy, self.width * mean, self.height * mean,
                          self.angle_deg, self.score)

    def table(self) -> np.ndarray:
        """(N, 7) rows in :data:`BOX_COLUMNS` order; label = row index + 1."""
        labels = np.arange(1, len(self) + 1, dtype=np.float64)
        return np.stack([labels, self.score, self.cx, self.cy, self.width, self.height,
                         self.angle_deg], axis=1) if len(self) else np.zeros((0, 7))

    @classmethod
    def empty(cls) -> Detections:
        z = np.zeros(0)
        return cls(z, z, z, z, z, z)


def decode_centers(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    angle2: np.ndarray,
    score_threshold: float,
    stride: int = 4,
) -> Detections:
    """Detections from CenterUNet maps.

    heatmap: (h, w) in [0, 1]; size: (2, h, w) long/short side in cells; offset: (2, h, w) in
    [0, 1] (x, y); angle2: (2, h, w) = (cos 2θ, sin 2θ).
    """
    peaks = (heatmap >= ndi.maximum_filter(heatmap, size=3)) & (heatmap > score_threshold)
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return Detections.empty()
    score = heatmap[ys, xs].astype(np.float64)
    order = np.argsort(-score, kind="stable")
    ys, xs, score = ys[order], xs[order], score[order]
    cx = (xs + offset[0, ys, xs]) * stride
    cy = (ys + offset[1, ys, xs]) * stride
    width = np.maximum(size[0, ys, xs], size[1, ys, xs]) * stride
    height = np.minimum(size[0, ys, xs], size[1, ys, xs]) * stride
    theta = 0.5 * np.arctan2(angle2[1, ys, xs], angle2[0, ys, xs])
    angle = np.degrees(theta) % 180.0
    return Detections(cx.astype(np.float64), cy.astype(np.float64), width.astype(np.float64),
                      height.astype(np.float64), angle.astype(np.float64), score)


def seeded_instances(
    segmentation: np.ndarray, detections: Detections, params: PostprocessParams
) -> tuple[np.ndarray, Detections]:
    """Watershed of the mask seeded at the detections' centres.

    The relief is the distance to the nearest centre, so a mask pixel joins the closest centre
    it can reach inside the mask (a Voronoi split of touching nuclei). The centres are the
    network's own object evidence; the distance to the mask border, used before, put the split
    at the narrowest neck of the merged blob even where the centres said otherwise (val AP@0.5
    0.772 → 0.781 at ×1, 0.714 → 0.720 at ×0.25, 0.762 → 0.773 at ×0.5).

    Returns (labels, kept detections) with label ``i`` belonging to kept detection ``i - 1``.
    Detections whose centre is off the mask, or whose region is below ``min_size``, are dropped.
    """
    mask = segmentation > params.fg_threshold
    h, w = mask.shape
    markers = np.zeros(mask.shape, np.int32)
    for i in range(len(detections)):
        r = min(max(math.floor(detections.cy[i]), 0), h - 1)
        c = min(max(math.floor(detections.cx[i]), 0), w - 1)
        if mask[r, c] and markers[r, c] == 0:  # higher scores claim a pixel first
            markers[r, c] = i + 1
    if not markers.any():
        return np.zeros(mask.shape, np.int32), Detections.empty()
    relief = ndi.distance_transform_edt(markers == 0).astype(np.float32)
    labels = flood_components(relief, markers, len(detections), mask, keep_seedless=False)
    areas = np.bincount(labels.ravel(), minlength=len(detections) + 1)
    keep = np.flatnonzero(areas[1:] >= max(params.min_size, 1))
    lookup = np.zeros(len(detections) + 1, np.int32)
    lookup[keep + 1] = np.arange(1, keep.size + 1, dtype=np.int32)
    return lookup[labels], detections.take(keep)
