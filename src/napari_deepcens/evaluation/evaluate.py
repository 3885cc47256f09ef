"""Scoring a folder of predictions against a dataset folder, overall and per modality."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from ..errors import DeepCeNSError
from ..io.images import read_labels
from ..io.layout import find_prediction, list_samples
from .metrics import ImageMatch, match_image, summarize

log = logging.getLogger(__name__)

COLUMNS = ("images", "AP@0.5", "AP@0.75", "DSB", "F1", "pixel_IoU")


def evaluate_folder(gt_dir: str | Path, pred_dir: str | Path) -> dict[str, dict[str, float]]:
    """Metrics for every sample of ``gt_dir`` whose prediction is in ``pred_dir``.

    Returns ``{"overall": {...}, "<modality>": {...}, ...}``. A ground-truth image with no
    prediction is an error (silently skipping it would inflate the score).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DeepCeNSError(f"prediction folder not found: {pred_dir}")
    by_modality: dict[str, list[ImageMatch]] = defaultdict(list)
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
    if missing:
        raise DeepCeNSError(
            f"{len(missing)} ground-truth images have no prediction in {pred_dir} "
            f"(expected <id>_labels.tif), e.g. {missing[0]}"
        )
    results = {"overall": summarize([m for ms in by_modality.values() for m in ms])}
    for modality in sorted(by_modality):
        results[modality] = summarize(by_modality[modality])
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per group."""
    lines = [f"{'group':<14}" + "".join(f"{c:>10}" for c in COLUMNS)]
    for group, metrics in results.items():
        cells = "".join(
            f"{metrics[c]:>10d}" if c == "images" else f"{metrics[c]:>10.3f}" for c in COLUMNS
        )
        lines.append(f"{group:<14}{cells}")
    return "\n".join(lines)
