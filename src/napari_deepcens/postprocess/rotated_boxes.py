"""Rotated boxes of instance masks: the minimum-area rotated rectangle (shapely).

A box is ``(cx, cy, width, height, angle_deg)`` in pixels, x = column, y = row, the pixel
(r, c) covering [c, c+1) × [r, r+1). ``width`` is the long side and ``angle_deg`` its direction
in [0, 180), counter-clockwise from the +x axis as seen with y pointing down (image convention).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from shapely import MultiPoint

#: Rows of :func:`rotated_boxes`.
FIELDS = ("label", "cx", "cy", "width", "height", "angle_deg")


def _corners(mask: np.ndarray, top: int, left: int) -> np.ndarray:
    """The corner points of the boundary pixels of ``mask`` as (x, y)."""
    edge = mask & ~ndi.binary_erosion(mask)
    rows, cols = np.nonzero(edge)
    x = np.concatenate([cols, cols + 1, cols, cols + 1]) + left
    y = np.concatenate([rows, rows, rows + 1, rows + 1]) + top
    return np.stack([x, y], axis=1).astype(np.float64)


def box_from_points(points: np.ndarray) -> tuple[float, float, float, float, float]:
    """Minimum rotated rectangle of (x, y) points → (cx, cy, width, height, angle_deg)."""
    rect = MultiPoint(points).minimum_rotated_rectangle
    coords = np.asarray(rect.exterior.coords)[:4] if rect.geom_type == "Polygon" else None
    if coords is None:  # degenerate (a line): fall back to its extent
        (x0, y0, x1, y1) = rect.bounds
        return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0), 0.0, 0.0
    e1, e2 = coords[1] - coords[0], coords[2] - coords[1]
    l1, l2 = float(np.hypot(*e1)), float(np.hypot(*e2))
    long_edge = e1 if l1 >= l2 else e2
    angle = math.degrees(math.atan2(-long_edge[1], long_edge[0])) % 180.0
    cx, cy = coords.mean(axis=0)
    return float(cx), float(cy), max(l1, l2), min(l1, l2), angle if angle < 180.0 - 1e-9 else 0.0


def rotated_boxes(labels: np.ndarray) -> list[tuple[int, float, float, float, float, float]]:
    """One row per object: (label, cx, cy, width, height, angle_deg)."""
    rows = []
    for index, slices in enumerate(ndi.find_objects(labels), start=1):
        if slices is None:
            continue
        mask = labels[slices] == index
        cx, cy, w, h, a = box_from_points(_corners(mask, slices[0].start, slices[1].start))
        rows.append((index, cx, cy, w, h, a))
    return rows


def box_corners(cx: float, cy: float, width: float, height: float, angle_deg: float) -> np.ndarray:
    """The 4 corners (x, y) of a rotated box, in order around it."""
    t = math.radians(angle_deg)
    u = np.array([math.cos(t), -math.sin(t)]) * width / 2   # y points down
    v = np.array([math.sin(t), math.cos(t)]) * height / 2
    c = np.array([cx, cy])
    return np.stack([c - u - v, c + u - v, c + u + v, c - u + v])
