"""Instance segmentation metrics in pure numpy (no torch).

Objects are matched one-to-one by IoU: at thresholds ≥ 0.5 a predicted object can overlap
only one ground-truth object by more than half, so matching is unambiguous (Caicedo et al.
2019, the DSB 2018 metric). For one image and threshold t:

* ``AP@t = TP / (TP + FP + FN)`` — the DSB definition (not the COCO area under a PR curve),
* ``F1@t = 2TP / (2TP + FP + FN)`` — object-wise F1 (seed 004),
* DSB score: AP averaged over t = 0.5, 0.55, …, 0.95; F1 likewise.

>>> gt = np.array([[1, 1, 0, 2, 2]])
>>> pred = np.array([[3, 3, 0, 0, 4]])
>>> round(match_image(gt, pred).ap(0.5), 3)   # one hit, one miss, object 4 too small
0.333
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every ground-truth and every predicted object, shape (n_gt, n_pred).

    Labels need not be consecutive; rows/columns follow the sorted unique non-zero labels.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    _, gt_idx = np.unique(gt, return_inverse=True)
    _, pred_idx = np.unique(pred, return_inverse=True)
    gt_idx, pred_idx = gt_idx.ravel(), pred_idx.ravel()
    has_bg_gt, has_bg_pred = int((gt == 0).any()), int((pred == 0).any())
    n_gt, n_pred = gt_idx.max() + 1, pred_idx.max() + 1
    overlap = np.bincount(gt_idx * n_pred + pred_idx, minlength=n_gt * n_pred)
    overlap = overlap.reshape(n_gt, n_pred).astype(np.float64)
    area_gt, area_pred = overlap.sum(1, keepdims=True), overlap.sum(0, keepdims=True)
    union = area_gt + area_pred - overlap
    iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    return iou[has_bg_gt:, has_bg_pred:]


@dataclass(frozen=True)
class ImageMatch:
    """Best IoU of each object, from which every count at every threshold follows."""

    best_gt: np.ndarray  # (n_gt,) best IoU of each GT object with any prediction
    n_pred: int
    pixel_iou: float

    @property
    def n_gt(self) -> int:
        return int(self.best_gt.size)

    def counts(self, t: float) -> tuple[int, int, int]:
        """(TP, FP, FN) at IoU threshold ``t`` (> t counts as a match; t ≥ 0.5)."""
        tp = int((self.best_gt > t).sum())
        return tp, self.n_pred - tp, self.n_gt - tp

    def ap(self, t: float) -> float:
        tp, fp, fn = self.counts(t)
        return tp / (tp + fp + fn) if tp + fp + fn else 1.0

    def f1(self, t: float) -> float:
        tp, fp, fn = self.counts(t)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def match_image(gt: np.ndarray, pred: np.ndarray) -> ImageMatch:
    """Match the objects of one image (instance label arrays of the same shape)."""
    iou = iou_matrix(gt, pred)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])
    fg_gt, fg_pred = gt > 0, pred > 0
    union = np.logical_or(fg_gt, fg_pred).sum()
    pixel_iou = float(np.logical_and(fg_gt, fg_pred).sum() / union) if union else 1.0
    return ImageMatch(best, iou.shape[1], pixel_iou)


def summarize(matches: list[ImageMatch]) -> dict[str, float]:
    """Metrics averaged over images (each image counts once, as in the DSB)."""
    if not matches:
        return {}
    ap = np.array([[m.ap(t) for t in THRESHOLDS] for m in matches])
    f1 = np.array([[m.f1(t) for t in THRESHOLDS] for m in matches])
    return {
        "images": len(matches),
        "AP@0.5": float(ap[:, 0].mean()),
        "AP@0.75": float(ap[:, 5].mean()),
        "DSB": float(ap.mean()),
        "F1": float(f1.mean()),
        "F1@0.5": float(f1[:, 0].mean()),
        "pixel_IoU": float(np.mean([m.pixel_iou for m in matches])),
    }
