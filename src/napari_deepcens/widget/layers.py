"""What the widgets read from napari layers: stack axes and the plane on screen."""

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
