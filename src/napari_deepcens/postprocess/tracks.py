"""Tracks from linked labels: where each nucleus is in every frame of a time-lapse.

Once :func:`~napari_deepcens.postprocess.link.link_planes` has given a nucleus one label
across frames, its track is the centroid of that label frame by frame. The table feeds
napari's Tracks layer (a tail behind every nucleus shows at a glance where linking went
wrong) and the CSV that ``deepcens segment --link`` writes beside the labels, from which
speeds, track lengths and per-nucleus areas over time are read without any image code.
"""

from __future__ import annotations

import numpy as np

from .link import planes_first


def track_table(labels: np.ndarray, axis: int = 0) -> np.ndarray:
    """Rows ``(label, index along axis, centroid over the other axes…, area in pixels)``,
    float64, sorted by label then index: one row per object per plane of ``axis``.

    ``labels``: a linked (…, Y, X) stack with at least one stack axis; ``axis`` the stack
    axis the objects were linked along (time). Centroids are in pixels of the other axes, in
    their order (z, y, x for a (T, Z, Y, X) stack).
    """
    labels = np.asarray(labels)
    moved = planes_first(labels, axis)
    rows = []
    for t in range(moved.shape[0]):
        volume = np.asarray(moved[t]).astype(np.int64, copy=False)
        flat = volume.ravel()
        if not flat.any():
            continue
        area = np.bincount(flat)
        ids = np.flatnonzero(area)
        ids = ids[ids > 0]
        centre = []
        for d, size in enumerate(volume.shape):  # coordinate sums along each axis in turn
            shape = [1] * volume.ndim
            shape[d] = size
            coord = np.broadcast_to(np.arange(size, dtype=np.float64).reshape(shape), volume.shape)
            centre.append(np.bincount(flat, weights=coord.ravel(), minlength=area.size)[ids]
                          / area[ids])
        rows.append(np.column_stack([ids, np.full(ids.size, t), *centre, area[ids]]))
    if not rows:
        return np.zeros((0, labels.ndim + 2))
    table = np.concatenate(rows).astype(np.float64)
    return table[np.lexsort((table[:, 1], table[:, 0]))]


def count_tracks(table: np.ndarray) -> int:
    """Distinct tracks in a :func:`track_table`."""
    return int(np.unique(table[:, 0]).size)
