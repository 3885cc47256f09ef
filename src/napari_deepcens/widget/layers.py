"""What the widgets read from napari layers (stack axes, the plane on screen) and the label
numbers their box layers carry."""

from __future__ import annotations

import numpy as np


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


def renamed(values: np.ndarray, names: dict[int, int]) -> np.ndarray:
    """``values`` with each label in ``names`` replaced by its new label (others kept)."""
    values = np.asarray(values, np.int64)
    if not names or not values.size:
        return values
    old = np.fromiter(names, np.int64, len(names))
    new = np.fromiter(names.values(), np.int64, len(names))
    order = np.argsort(old)
    old, new = old[order], new[order]
    pos = np.minimum(np.searchsorted(old, values), old.size - 1)
    return np.where(old[pos] == values, new[pos], values)


def rename_box_labels(shapes, names: dict[int, int], rows: np.ndarray | None = None) -> None:
    """Make a box layer's ``label`` feature follow labels renamed in its Labels layer (only
    the ``rows`` given: the boxes of that layer's class); boxes of deleted objects go."""
    if "label" not in shapes.features or not len(shapes.features):
        return
    features = shapes.features.copy()
    labels = features["label"].to_numpy()
    new = renamed(labels, names)
    if rows is not None:
        new = np.where(rows, new, labels)
    features["label"] = new
    keep = new != 0
    if not keep.all():
        shapes.selected_data = set()
        shapes.data = [d for d, k in zip(shapes.data, keep, strict=True) if k]
        features = features[keep].reset_index(drop=True)
    shapes.features = features
