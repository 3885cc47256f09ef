"""Rotated boxes of instance masks: the minimum-area rotated rectangle (shapely).

A box is ``(cx, cy, width, height, angle_deg)`` in pixels, x = column, y = row, the pixel
(r, c) covering [c, c+1) × [r, r+1). ``width`` is the long side and ``angle_deg`` its direction
in [0, 180), counter-clockwise from the +x axis as seen with y pointing down (image convention).
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import MultiPoint

#: Rows of :func:`rotated_boxes`.
FIELDS = ("label", "cx", "cy", "width", "height", "angle_deg")


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


def _edge_corners(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The corner points (x, y) of every object's boundary pixels (4-connected boundary),
    grouped by label in increasing order; and the label of each point."""
    padded = np.pad(labels, 1)
    core = padded[1:-1, 1:-1]
    edge = (core != 0) & ((padded[:-2, 1:-1] != core) | (padded[2:, 1:-1] != core)
                          | (padded[1:-1, :-2] != core) | (padded[1:-1, 2:] != core))
    rows, cols = np.nonzero(edge)
    owner = core[rows, cols]
    x = np.concatenate([cols, cols + 1, cols, cols + 1])
    y = np.concatenate([rows, rows, rows + 1, rows + 1])
    owner = np.tile(owner, 4)
    order = np.argsort(owner, kind="stable")
    return np.stack([x[order], y[order]], axis=1).astype(np.float64), owner[order]


def rotated_boxes(labels: np.ndarray) -> list[tuple[int, float, float, float, float, float]]:
    """One row per object: (label, cx, cy, width, height, angle_deg).

    All objects go to shapely in one vectorised call, as line strings through their boundary
    pixels' corners (same hull, hence the same rectangle, as the point sets, without building a
    GEOS point per corner), the boundary pixels found for the whole image at once: 534 nuclei
    on a 1024² image take 0.06 s instead of 0.32 s one object at a time — most of a DeepCeNS
    slider move, and part of every CenterUNet training crop's targets.
    """
    points, owner = _edge_corners(labels)
    if not owner.size:
        return []
    present, first, index = np.unique(owner, return_index=True, return_inverse=True)
    rects = shapely.oriented_envelope(shapely.linestrings(points, indices=index))
    rows: list[tuple[int, float, float, float, float, float]] = []
    # pixel corners always span an area, so GEOS returns 5-coordinate rectangles; should it
    # ever return anything else, that object goes through box_from_points on its own
    rectangle = shapely.get_type_id(rects) == 3
    rectangle[rectangle] = shapely.get_num_coordinates(shapely.get_exterior_ring(rects[rectangle])) == 5
    rings = shapely.get_coordinates(shapely.get_exterior_ring(rects[rectangle]))
    corners = rings.reshape(-1, 5, 2)[:, :4]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 1]
    l1, l2 = np.hypot(e1[:, 0], e1[:, 1]), np.hypot(e2[:, 0], e2[:, 1])
    long_edge = np.where((l1 >= l2)[:, None], e1, e2)
    angle = np.degrees(np.arctan2(-long_edge[:, 1], long_edge[:, 0])) % 180.0
    angle = np.where(angle < 180.0 - 1e-9, angle, 0.0)
    centre = corners.mean(axis=1)
    fast = iter(zip(centre[:, 0], centre[:, 1], np.maximum(l1, l2), np.minimum(l1, l2), angle,
                    strict=True))
    ends = [*first[1:], owner.size]
    for i, label in enumerate(present):
        box = next(fast) if rectangle[i] else box_from_points(points[first[i]:ends[i]])
        rows.append((int(label), *(float(v) for v in box)))
    return rows


def box_corners(cx: float, cy: float, width: float, height: float, angle_deg: float) -> np.ndarray:
    """The 4 corners (x, y) of a rotated box, in order around it."""
    t = math.radians(angle_deg)
    u = np.array([math.cos(t), -math.sin(t)]) * width / 2   # y points down
    v = np.array([math.sin(t), math.cos(t)]) * height / 2
    c = np.array([cx, cy])
    return np.stack([c - u - v, c + u - v, c + u + v, c - u + v])
