"""Scoring a folder of predictions against a dataset folder, overall and per modality."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import DeepCeNSError
from ..io.images import read_labels
from ..io.layout import find_prediction, list_samples
from ..postprocess.rotated_boxes import rotated_boxes
from .boxes import rotated_box_ap
from .metrics import ImageMatch, match_image, summarize

log = logging.getLogger(__name__)

COLUMNS = ("images", "AP@0.5", "AP@0.75", "DSB", "F1", "pixel_IoU")
BOX_COLUMNS = ("box_AP@0.5", "box_AP@0.75", "box_AP")


def evaluate_folder(gt_dir: str | Path, pred_dir: str | Path) -> dict[str, dict[str, float]]:
    """Metrics for every sample of ``gt_dir`` whose prediction is in ``pred_dir``.

    Returns ``{"overall": {...}, "<modality>": {...}, ...}``. A ground-truth image with no
    prediction is an error (silently skipping it would inflate the score).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DeepCeNSError(f"prediction folder not found: {pred_dir}")
    by_modality: dict[str, list[ImageMatch]] = defaultdict(list)
    boxes_gt: dict[str, list[np.ndarray]] = defaultdict(list)
    boxes_pred: dict[str, list[np.ndarray]] = defaultdict(list)
    missing = []
    for sample in list_samples(gt_dir):
        pred_path = find_prediction(pred_dir, sample.id)
        if pred_path is None:
            missing.append(sample.id)
            continue
        gt, pred = read_labels(sample.labels), read_labels(pred_path)
        if gt.shape != pred.shape:
            raise DeepCeNSError(
                f"{sample.id}: prediction {pred.shape} and ground truth {gt.shape} differ in shape"
            )
        by_modality[sample.modality].append(match_image(gt, pred))
        box_file = pred_path.with_name(pred_path.name.replace("_labels", "_boxes")).with_suffix(".csv")
        if box_file.is_file():
            boxes_gt[sample.modality].append(np.asarray([r[1:] for r in rotated_boxes(gt)]).reshape(-1, 5))
            boxes_pred[sample.modality].append(read_boxes_csv(box_file))
    if missing:
        raise DeepCeNSError(
            f"{len(missing)} ground-truth images have no prediction in {pred_dir} "
            f"(expected <id>_labels.tif), e.g. {missing[0]}"
        )
    results = {"overall": summarize([m for ms in by_modality.values() for m in ms])}
    for modality in sorted(by_modality):
        results[modality] = summarize(by_modality[modality])
    if boxes_pred:
        results["overall"].update(rotated_box_ap(
            [b for bs in boxes_gt.values() for b in bs], [b for bs in boxes_pred.values() for b in bs]))
        for modality in boxes_pred:
            results[modality].update(rotated_box_ap(boxes_gt[modality], boxes_pred[modality]))
    return results


def read_boxes_csv(path: Path) -> np.ndarray:
    """(N, 6) cx, cy, width, height, angle_deg, score from a ``<stem>_boxes.csv``."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = ("cx", "cy", "width", "height", "angle_deg", "score")
    return np.asarray([[float(r[c]) for c in cols] for r in rows]).reshape(-1, 6)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per group."""
    columns = COLUMNS + tuple(c for c in BOX_COLUMNS if c in results.get("overall", {}))
    lines = [f"{'group':<14}" + "".join(f"{c:>12}" for c in columns)]
    for group, metrics in results.items():
        cells = "".join(
            f"{metrics[c]:>12d}" if c == "images" else f"{metrics.get(c, float('nan')):>12.3f}"
            for c in columns
        )
        lines.append(f"{group:<14}{cells}")
    return "\n".join(lines)
