"""COCO mask and box mAP (pycocotools) of instance label images with per-object scores.

The DSB-style metrics (AP = TP/(TP+FP+FN) per image) ignore confidence; COCO's AP ranks
detections by score and integrates precision over recall, which is what the DeepCeNS paper
reports. Objects without a score (U-Net + watershed) all get score 1, so their COCO AP is a
single operating point.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from scipy import ndimage as ndi

#: Up to this many objects per image are scored (COCO's default of 100 is too few for nuclei).
MAX_DETS = 1000


def _instances(labels: np.ndarray):
    """(RLE, bbox xywh, area) of every object of a label image."""
    from ..io.dataset_export import object_rle

    out = []
    for index, slices in enumerate(ndi.find_objects(labels), start=1):
        if slices is None:
            continue
        rle, area = object_rle(labels, index, slices)
        rows, cols = slices
        bbox = [float(cols.start), float(rows.start), float(cols.stop - cols.start),
                float(rows.stop - rows.start)]
        out.append((index, rle, bbox, float(area)))
    return out


def coco_map(gts: list[np.ndarray], preds: list[np.ndarray],
             scores: list[np.ndarray | None] | None = None) -> dict[str, float]:
    """Mask and box mAP (IoU .5:.95), mAP@0.5 and mAP@0.75 over a list of images.

    ``scores[i][k]``: score of label ``k + 1`` of ``preds[i]`` (``None``: all 1).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    scores = scores or [None] * len(preds)
    images, gt_anns, dt_anns = [], [], []
    for image_id, (gt, pred, score) in enumerate(zip(gts, preds, scores, strict=True), start=1):
        images.append({"id": image_id, "height": int(gt.shape[0]), "width": int(gt.shape[1])})
        for _index, rle, bbox, area in _instances(gt):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": 1,
                            "segmentation": rle, "bbox": bbox, "area": area, "iscrowd": 0})
        for index, rle, bbox, area in _instances(pred):
            s = 1.0 if score is None or index > len(score) else float(score[index - 1])
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": image_id, "category_id": 1,
                            "segmentation": rle, "bbox": bbox, "area": area, "score": s})
    results: dict[str, float] = {}
    if not gt_anns:
        return results
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns,
                           "categories": [{"id": 1, "name": "object"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns) if dt_anns else None
        for kind, name in (("segm", "mask"), ("bbox", "box")):
            if coco_dt is None:
                results.update({f"{name}_mAP": 0.0, f"{name}_mAP@0.5": 0.0, f"{name}_mAP@0.75": 0.0})
                continue
            ev = COCOeval(coco_gt, coco_dt, kind)
            ev.params.maxDets = [1, 100, MAX_DETS]
            ev.evaluate()
            ev.accumulate()
            # read at MAX_DETS: summarize() reports its headline .5:.95 mAP at 100
            # detections per image whatever maxDets says, and fields hold hundreds of nuclei
            precision = ev.eval["precision"][:, :, 0, 0, -1]  # IoU × recall, area "all"
            results.update({f"{name}_mAP": _mean_defined(precision),
                            f"{name}_mAP@0.5": _mean_defined(precision[0]),
                            f"{name}_mAP@0.75": _mean_defined(precision[5])})
    return results


def _mean_defined(precision: np.ndarray) -> float:
    """Mean of pycocotools' precision table over its defined entries (-1: undefined)."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else 0.0
