"""Rotated-box average precision (COCO style), IoU from shapely polygons.

Detections of all images are ranked by score; at each IoU threshold a detection is a true
positive when it overlaps a not-yet-matched ground-truth box of its image by more than the
threshold. AP is the area under the precision-recall curve, interpolated at 101 recall points
(COCO). ``AP`` alone is the mean over thresholds 0.5:0.05:0.95.
"""

from __future__ import annotations

import numpy as np
from shapely import Polygon

from ..postprocess.rotated_boxes import box_corners
from .metrics import THRESHOLDS


def box_polygon(cx: float, cy: float, width: float, height: float, angle_deg: float) -> Polygon:
    return Polygon(box_corners(cx, cy, width, height, angle_deg))


def box_iou(a: Polygon, b: Polygon) -> float:
    if not a.intersects(b):
        return 0.0
    inter = a.intersection(b).area
    union = a.area + b.area - inter
    return float(inter / union) if union > 0 else 0.0


def _ap(tp: np.ndarray, n_gt: int) -> float:
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, tp.size + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < precision.size else 0.0 for i in idx]))


def rotated_box_ap(
    gt: list[np.ndarray], pred: list[np.ndarray], thresholds=THRESHOLDS
) -> dict[str, float]:
    """AP over images. ``gt[i]``: (G, 5) boxes (cx, cy, w, h, angle_deg); ``pred[i]``: (P, 6)
    boxes with their score last."""
    gt_polys = [[box_polygon(*b) for b in boxes] for boxes in gt]
    dets = [(float(p[5]), i, box_polygon(*p[:5])) for i, boxes in enumerate(pred) for p in boxes]
    dets.sort(key=lambda d: -d[0])
    n_gt = sum(len(g) for g in gt_polys)
    ious = [[box_iou(poly, g) for g in gt_polys[i]] for _s, i, poly in dets]
    result = {}
    for t in thresholds:
        taken = [np.zeros(len(g), bool) for g in gt_polys]
        tp = np.zeros(len(dets))
        for k, (_score, i, _poly) in enumerate(dets):
            row = np.asarray(ious[k])
            if row.size == 0:
                continue
            row = np.where(taken[i], -1.0, row)
            j = int(np.argmax(row))
            if row[j] > t:
                taken[i][j] = True
                tp[k] = 1
        result[f"{t:.2f}"] = _ap(tp, n_gt)
    return {"box_AP@0.5": result["0.50"], "box_AP@0.75": result["0.75"],
            "box_AP": float(np.mean(list(result.values())))}
