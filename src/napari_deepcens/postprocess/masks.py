"""Detections with box-relative masks (DeepCeNS) → one instance label image per class.

Each detection's M×M mask probabilities are resampled onto the image pixels its box covers
(bilinear, at pixel centres, separably: two small matrix products), thresholded, and painted
in order of increasing score so that where two detections of one class overlap, the more
confident one keeps the pixels. Labels are numbered by decreasing score; detections left
with fewer than ``min_size`` pixels are dropped. Every step works on cached detections, so
the score and mask sliders never re-run the network.
"""

from __future__ import annotations

import math

import numpy as np

from .centers import Detections
from .outlines import follow_stain
from .params import PostprocessParams
from .rotated_boxes import rotated_boxes


def _sampling_matrix(start: int, stop: int, lo: float, hi: float, m: int) -> np.ndarray:
    """(stop-start, m) bilinear weights sampling an m-cell mask over [lo, hi) at pixel centres."""
    centres = np.arange(start, stop, dtype=np.float64) + 0.5
    pos = (centres - lo) / max(hi - lo, 1e-6) * m - 0.5
    pos = pos.clip(0, m - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    frac = pos - i0
    weights = np.zeros((stop - start, m), np.float32)
    rows = np.arange(stop - start)
    np.add.at(weights, (rows, i0), 1 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights


def paste_masks(boxes: np.ndarray, scores: np.ndarray, masks: np.ndarray, shape: tuple[int, int],
                threshold: float, min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels of one class; returns (labels, index of the detection of each label).

    ``boxes`` (N, 4) xyxy in pixels of ``shape``; ``masks`` (N, M, M) probabilities.
    """
    h, w = shape
    labels = np.zeros(shape, np.int32)
    order = np.argsort(scores, kind="stable")  # low scores first: higher ones overwrite
    rank = np.empty(len(order), np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(order) + 1)
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        r0, r1 = max(math.floor(y0), 0), min(math.ceil(y1), h)
        c0, c1 = max(math.floor(x0), 0), min(math.ceil(x1), w)
        if r1 <= r0 or c1 <= c0:
            continue
        m = masks[i].astype(np.float32)
        rows = _sampling_matrix(r0, r1, y0, y1, m.shape[0])
        cols = _sampling_matrix(c0, c1, x0, x1, m.shape[1])
        prob = rows @ m @ cols.T
        labels[r0:r1, c0:c1][prob > threshold] = rank[i]
    # renumber 1..K by decreasing score, dropping detections that kept too few pixels
    areas = np.bincount(labels.ravel(), minlength=len(order) + 1)
    by_rank = np.argsort(-scores, kind="stable")  # by_rank[r-1] = detection of rank r
    kept_ranks = np.flatnonzero(areas[1:] >= max(min_size, 1)) + 1
    lookup = np.zeros(len(order) + 1, np.int32)
    lookup[kept_ranks] = np.arange(1, kept_ranks.size + 1, dtype=np.int32)
    return lookup[labels], by_rank[kept_ranks - 1]


def class_instances(dets: dict[str, np.ndarray], shape: tuple[int, int], class_names: tuple[str, ...],
                    params: PostprocessParams, stains: dict[str, np.ndarray] | None = None,
                    diameter: float = 0.0) -> dict[str, tuple[np.ndarray, Detections]]:
    """Per class name: (instance labels, rotated boxes of the masks with detection scores);
    label ``i`` ↔ box ``i - 1``. ``stains``: class name → the stain (on ``shape``, from
    :func:`.outlines.smooth_stain`) its outlines follow when ``params.outline_threshold`` > 0
    (:mod:`.outlines`), with ``diameter`` the nucleus diameter in pixels."""
    out = {}
    stains = stains or {}
    for k, name in enumerate(class_names, start=1):
        pick = np.flatnonzero((dets["classes"] == k) & (dets["scores"] >= params.score_threshold))
        labels, src = paste_masks(dets["boxes"][pick], dets["scores"][pick], dets["masks"][pick],
                                  shape, params.fg_threshold, params.min_size)
        if name in stains and params.outline_threshold > 0:
            labels = follow_stain(labels, stains[name], diameter, params.outline_threshold)
        rows = rotated_boxes(labels)
        table = np.asarray([r[1:] for r in rows], np.float64).reshape(-1, 5)
        score = dets["scores"][pick][src].astype(np.float64)
        boxes = Detections(table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4], score)
        out[name] = (labels, boxes)
    return out
