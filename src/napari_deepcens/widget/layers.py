"""What the widgets read from napari layers: stack axes, the plane on screen, and which
object a box of rotated boxes holds; and where napari draws a box."""

from __future__ import annotations

import numpy as np

from ..postprocess.rotated_boxes import box_corners

#: Set on the layers the Segment tab made (an attribute of the layer object, not metadata):
#: napari's Duplicate Layer copies metadata, and a copy, the user's, often made to correct
#: on, must never be written over; a dock closed and opened again still finds its layers.
MADE_HERE = "_deepcens_made"


def mark_made(layer):
    """Mark ``layer`` as made by the Segment tab; returns it."""
    setattr(layer, MADE_HERE, True)
    return layer


def made_here(layer) -> bool:
    """Whether the Segment tab made ``layer`` (not a napari copy of one)."""
    return getattr(layer, MADE_HERE, False) is True


def napari_corners(cx: float, cy: float, width: float, height: float, angle_deg: float) -> np.ndarray:
    """A rotated box's 4 corners as napari places them: (row, col), data coordinates.

    Boxes (and their CSV tables) count pixel ``(r, c)`` as the square from ``c`` to ``c + 1``;
    napari draws it centred on ``(r, c)``, from ``c − ½`` to ``c + ½``. Without the half-pixel
    shift every box sat half a pixel below and right of its labels."""
    return box_corners(cx, cy, width, height, angle_deg)[:, ::-1] - 0.5


def stack_axes(layer) -> tuple[int, ...]:
    """The stack axes (time, z, …) of an image layer: ``()`` for one 2-D image."""
    data = layer.data[0] if layer.multiscale else layer.data
    return tuple(int(n) for n in data.shape[: data.ndim - (3 if getattr(layer, "rgb", False) else 2)])


def displayed_plane(layer, viewer) -> tuple[int, ...]:
    """Index of the plane of ``layer`` the viewer shows now (its dims sliders)."""
    leading = stack_axes(layer)
    point = np.asarray(viewer.dims.point)[-layer.ndim:]
    data = np.asarray(layer.world_to_data(point))
    return tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(data, leading, strict=False))


def napari_corners_of(boxes: np.ndarray) -> np.ndarray:
    """:func:`napari_corners` of every row of ``boxes`` (cx, cy, width, height, angle_deg)
    at once, (N, 4, 2): thousands of boxes in milliseconds, on the GUI thread."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    cx, cy, w, h, angle = boxes.T
    t = np.radians(angle)
    u = np.stack([np.cos(t), -np.sin(t)], axis=1) * (w / 2)[:, None]  # y points down
    v = np.stack([np.sin(t), np.cos(t)], axis=1) * (h / 2)[:, None]
    c = np.stack([cx, cy], axis=1)
    xy = np.stack([c - u - v, c + u - v, c + u + v, c - u + v], axis=1)
    return xy[:, :, ::-1] - 0.5


def object_in_box(labels, corners: np.ndarray, named: int = 0) -> int:
    """The object a rotated box (its four corners, data coordinates: the plane index first
    for a stack) holds, read from the labels as they are now: ``named``, the label the box
    was drawn for, if most of that object lies in the box, else the label filling most of
    it (after an edit the number may name another object); 0 when it holds none."""
    from skimage.draw import polygon

    plane = tuple(round(float(v)) for v in corners[0, :-2])
    rows, cols = corners[:, -2], corners[:, -1]
    h, w = labels.shape[-2:]
    r0, c0 = max(int(np.floor(rows.min())), 0), max(int(np.floor(cols.min())), 0)
    r1, c1 = min(int(np.ceil(rows.max())) + 1, h), min(int(np.ceil(cols.max())) + 1, w)
    if r1 <= r0 or c1 <= c0 or any(not 0 <= i < n for i, n in zip(plane, labels.shape, strict=False)):
        return 0
    window = np.asarray(labels[(*plane, slice(r0, r1), slice(c0, c1))])
    rr, cc = polygon(rows - r0, cols - c0, shape=window.shape)
    inside = window[rr, cc]
    inside = inside[inside > 0]
    if not inside.size:
        return 0
    if named:
        here = int(np.count_nonzero(inside == named))
        whole = (np.count_nonzero(labels[plane] == named) if isinstance(labels, np.ndarray)
                 else np.count_nonzero(window == named))
        if here and 2 * here >= whole:
            return int(named)
    values, counts = np.unique(inside, return_counts=True)
    return int(values[np.argmax(counts)])


def box_of_label(labels, viewer, boxes, candidates: np.ndarray, value: int) -> list[int]:
    """Boxes (indices among ``candidates``) on the plane on screen that overlap object
    ``value`` and are filled by it."""
    if not isinstance(labels.data, np.ndarray):  # lazy labels of a slide: not searched whole
        return []
    plane = displayed_plane(labels, viewer) if labels.ndim > 2 else ()
    ys, xs = np.nonzero(labels.data[plane] == value)
    if not ys.size:
        return []
    # napari rebuilds its whole list of shapes on every ``boxes.data`` read: read it once
    # (one read per box made a click on 8000 boxes take 7 s), and test only the boxes whose
    # extent meets the object's
    every = boxes.data
    index = np.flatnonzero(candidates)
    if not index.size:
        return []
    corners = np.stack([np.asarray(every[i], np.float64) for i in index])  # (N, 4, D)
    lo, hi = corners[:, :, -2:].min(1), corners[:, :, -2:].max(1)
    near = ((hi[:, 0] >= ys.min()) & (lo[:, 0] <= ys.max() + 1)
            & (hi[:, 1] >= xs.min()) & (lo[:, 1] <= xs.max() + 1))
    if corners.shape[2] > 2:  # a stack: the plane on screen only
        near &= (np.round(corners[:, 0, :-2]) == np.asarray(plane)).all(axis=1)
    return [int(i) for i, c in zip(index[near], corners[near], strict=True)
            if object_in_box(labels.data, c, value) == value]
