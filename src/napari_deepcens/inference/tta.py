"""Test-time augmentation: the network run on the four flips of each tile, outputs merged.

A network's errors on one view of an object are partly independent of its errors on the
mirrored view, so merging the views averages some of them away, at four times the cost.
Dense maps are averaged after flipping them back, but only the maps whose value at a pixel
does not change under a flip and which are trained at every pixel (foreground, distance,
segmentation, centre heatmap). Maps read only at object centres, or whose values change
sign under a flip (CenterUNet's sub-cell offsets and angle), come from the unflipped pass.

Detections cannot be averaged pixel by pixel: the four passes' detections are flipped back
and fused (weighted box fusion, Solovyev et al. 2021): detections of one class that overlap
a higher-scoring one from another pass (box IoU ≥ ``iou``) join its cluster, one per pass;
a cluster becomes one detection whose box and mask are the score-weighted means of its
members' and whose score is their summed score over the number of passes, so an object
found in one pass only keeps a quarter of its score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.ops import box_iou

#: Axes flipped in each pass (the last two axes of a tile are y, x).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: Dense maps that are averaged over the flips (see the module docstring).
AVERAGED = frozenset({"foreground", "distance", "segmentation", "heatmap"})


def _flip(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(np.flip(array, axes)) if axes else array


def flip_averaged_maps(predict_tile: Callable[[np.ndarray], dict[str, np.ndarray]],
                       tile: np.ndarray) -> dict[str, np.ndarray]:
    """``predict_tile`` on ``tile`` with the :data:`AVERAGED` maps averaged over :data:`FLIPS`.

    Map strides must divide the tile's sides, so that a flipped coarse map is the coarse map
    of the flipped tile (the tilers pad tiles to a multiple of the largest stride)."""
    out = predict_tile(tile)
    sums = {k: v.astype(np.float32) for k, v in out.items() if k in AVERAGED}
    for axes in FLIPS[1:]:
        flipped = predict_tile(_flip(tile, axes))
        for k in sums:
            sums[k] += np.flip(flipped[k], axes)
    return {**out, **{k: v / len(FLIPS) for k, v in sums.items()}}


def unflip_detections(dets: dict[str, np.ndarray], axes: tuple[int, ...],
                      height: int, width: int) -> dict[str, np.ndarray]:
    """Detections made on a tile flipped along ``axes``, in the unflipped tile's pixels."""
    boxes, masks = dets["boxes"].copy(), dets["masks"]
    if -1 in axes:
        boxes[:, [0, 2]] = width - dets["boxes"][:, [2, 0]]
        masks = masks[:, :, ::-1]
    if -2 in axes:
        boxes[:, [1, 3]] = height - dets["boxes"][:, [3, 1]]
        masks = masks[:, ::-1, :]
    return {**dets, "boxes": boxes, "masks": np.ascontiguousarray(masks)}


def fuse_detections(passes: list[dict[str, np.ndarray]], iou: float = 0.55) -> dict[str, np.ndarray]:
    """Weighted box fusion of detections from ``len(passes)`` views of the same tile."""
    n_passes = len(passes)
    boxes = np.concatenate([p["boxes"] for p in passes]).astype(np.float32)
    scores = np.concatenate([p["scores"] for p in passes]).astype(np.float32)
    classes = np.concatenate([p["classes"] for p in passes])
    masks = np.concatenate([p["masks"] for p in passes]).astype(np.float32)
    source = np.concatenate([np.full(len(p["scores"]), i) for i, p in enumerate(passes)])
    order = np.argsort(-scores, kind="stable")
    boxes, scores, classes, masks, source = (a[order] for a in (boxes, scores, classes, masks, source))
    overlap = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy() if len(boxes) else None
    free = np.ones(len(scores), bool)
    out_boxes, out_scores, out_classes, out_masks = [], [], [], []
    for i in range(len(scores)):
        if not free[i]:
            continue
        members = [i]
        free[i] = False
        candidates = np.flatnonzero(free & (classes == classes[i]) & (overlap[i] >= iou)
                                    & (source != source[i]))
        taken = {int(source[i])}
        for j in candidates:  # highest score first: one member per pass
            if int(source[j]) not in taken:
                taken.add(int(source[j]))
                members.append(j)
                free[j] = False
        w = scores[members]
        out_boxes.append((boxes[members] * w[:, None]).sum(0) / w.sum())
        out_masks.append((masks[members] * w[:, None, None]).sum(0) / w.sum())
        out_scores.append(w.sum() / n_passes)
        out_classes.append(classes[i])
    if not out_scores:
        return {k: v[:0] for k, v in passes[0].items()}
    fused = {"boxes": np.stack(out_boxes).astype(np.float32),
             "scores": np.asarray(out_scores, np.float32),
             "classes": np.asarray(out_classes, passes[0]["classes"].dtype),
             "masks": np.stack(out_masks).astype(passes[0]["masks"].dtype)}
    order = np.argsort(-fused["scores"], kind="stable")
    return {k: v[order] for k, v in fused.items()}


def flip_fused_detections(detect_tile: Callable[[np.ndarray], dict[str, np.ndarray]],
                          tile: np.ndarray, iou: float = 0.55) -> dict[str, np.ndarray]:
    """``detect_tile`` on the four flips of ``tile`` (C, H, W), fused."""
    height, width = tile.shape[-2:]
    passes = [unflip_detections(detect_tile(_flip(tile, axes)), axes, height, width)
              for axes in FLIPS]
    return fuse_detections(passes, iou)
