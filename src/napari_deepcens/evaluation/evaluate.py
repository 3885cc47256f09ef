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
COCO_COLUMNS = ("mask_mAP", "mask_mAP@0.5", "box_mAP", "box_mAP@0.5")


def evaluate_folder(gt_dir: str | Path, pred_dir: str | Path,
                    coco: bool = True) -> dict[str, dict[str, float]]:
    """Metrics for every sample of ``gt_dir`` whose prediction is in ``pred_dir``.

    Returns ``{"overall": {...}, "<modality>": {...}, ...}``, and a group per class when the
    data has several classes (``<id>/labels_<class>.*`` against ``<id>_<class>_labels.tif``).
    With ``coco``, COCO mask/box mAP are added (scores from ``_boxes.csv`` where there is
    one). A ground-truth image with no prediction is an error (silently skipping it would
    inflate the score).
    """
    from .coco import coco_map

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DeepCeNSError(f"prediction folder not found: {pred_dir}")
    groups: dict[str, list[ImageMatch]] = defaultdict(list)
    boxes_gt: dict[str, list[np.ndarray]] = defaultdict(list)
    boxes_pred: dict[str, list[np.ndarray]] = defaultdict(list)
    coco_images: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = defaultdict(list)
    missing = []
    samples = list_samples(gt_dir)
    multi = any(len(sample.classes) > 1 for sample in samples)
    for sample in samples:
        for cls, gt_path in sample.classes.items():
            pred_path = find_prediction(pred_dir, sample.id, cls if multi else None)
            if pred_path is not None and pred_path.resolve() == Path(gt_path).resolve():
                raise DeepCeNSError(f"the predictions for {sample.id} are its ground truth "
                                    f"({pred_path}): give the folder `deepcens segment` wrote "
                                    "as the second folder")
            if pred_path is None:
                missing.append(f"{sample.id}_{cls}" if multi else sample.id)
                continue
            gt, pred = read_labels(gt_path), read_labels(pred_path)
            if gt.shape != pred.shape:
                raise DeepCeNSError(
                    f"{sample.id}: prediction {pred.shape} and ground truth {gt.shape} differ in shape"
                )
            match = match_image(gt, pred)
            keys = [sample.modality] + ([cls] if multi else [])
            box_file = pred_path.with_name(pred_path.name.replace("_labels", "_boxes")).with_suffix(".csv")
            scores, table = None, _boxes_of(box_file, pred) if box_file.is_file() else None
            if table is not None:
                scores = table[:, 5]
                gt_boxes = np.asarray([r[1:] for r in rotated_boxes(gt)]).reshape(-1, 5)
            for key in keys:
                groups[key].append(match)
                if table is not None:
                    boxes_gt[key].append(gt_boxes)
                    boxes_pred[key].append(table)
                if coco:
                    coco_images[key].append((gt, pred, scores))
    if missing:
        expected = "<id>_<class>_labels.tif" if multi else "<id>_labels.tif"
        raise DeepCeNSError(
            f"{len(missing)} ground-truth images have no prediction in {pred_dir} "
            f"(expected {expected}), e.g. {missing[0]}"
        )
    # overall pools every image once (and every class of it, for multi-class data)
    modalities = sorted({s.modality for s in samples} & set(groups))
    results = {"overall": summarize([m for key in modalities for m in groups[key]])}
    for key in [*modalities, *sorted(set(groups) - set(modalities))]:
        results[key] = summarize(groups[key])
    if boxes_pred:
        results["overall"].update(rotated_box_ap([b for key in modalities for b in boxes_gt[key]],
                                                 [b for key in modalities for b in boxes_pred[key]]))
        for key in boxes_pred:
            results[key].update(rotated_box_ap(boxes_gt[key], boxes_pred[key]))
    if coco:
        everything = [item for key in modalities for item in coco_images[key]]
        results["overall"].update(coco_map(*map(list, zip(*everything, strict=True))))
        for key, items in coco_images.items():
            results[key].update(coco_map(*map(list, zip(*items, strict=True))))
    return results


def _boxes_of(box_file: Path, pred: np.ndarray) -> np.ndarray | None:
    """The boxes of ``box_file`` if they are those of ``pred`` (box ``i`` ↔ label ``i + 1``,
    one per label); ``None``, with a warning, for a table left by another run (e.g. another
    model's boxes beside labels re-made with ``--overwrite``): its scores would be paired
    with the wrong objects."""
    try:
        rows = _rows(box_file)
        labels = [int(float(r["label"])) for r in rows if r.get("label") not in (None, "")]
        table = _table(rows)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # edited by hand, damaged
        log.warning("%s cannot be read (%s: %s): its boxes and scores are left out",
                    box_file.name, type(exc).__name__, exc)
        return None
    present = np.unique(pred)
    present = present[present > 0]
    expected = np.arange(1, len(labels) + 1)
    if labels != expected.tolist() or not np.array_equal(present, expected):
        log.warning("%s does not describe the labels of %s (%d boxes, %d labels): its boxes and "
                    "scores are left out", box_file.name, box_file.name.replace("_boxes.csv", "_labels.tif"),
                    len(labels), present.size)
        return None
    return table


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _table(rows: list[dict[str, str]]) -> np.ndarray:
    cols = ("cx", "cy", "width", "height", "angle_deg", "score")
    return np.asarray([[float(r[c]) for c in cols] for r in rows]).reshape(-1, 6)


def read_boxes_csv(path: Path) -> np.ndarray:
    """(N, 6) cx, cy, width, height, angle_deg, score from a ``<stem>_boxes.csv``."""
    return _table(_rows(path))


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per group."""
    columns = COLUMNS + tuple(c for c in BOX_COLUMNS + COCO_COLUMNS if c in results.get("overall", {}))
    lines = [f"{'group':<14}" + "".join(f"{c:>13}" for c in columns)]
    for group, metrics in results.items():
        cells = "".join(
            f"{metrics[c]:>13d}" if c == "images" else f"{metrics.get(c, float('nan')):>13.3f}"
            for c in columns
        )
        lines.append(f"{group:<14}{cells}")
    return "\n".join(lines)
