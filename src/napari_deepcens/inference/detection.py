"""Tiled inference for detection models (DeepCeNS): detections from overlapping tiles, merged.

Dense maps can be blended across tiles; detections cannot. Each tile is run on its own and
keeps only the detections whose box centre lies in the part of the tile it owns: the tiles'
overlaps are split down the middle, so every point of the image is owned by exactly one tile.
An object narrower than the overlap, centred in a tile's owned part, lies wholly inside that
tile, so it is never cut at a tile border; a final class-wise NMS removes the rare object
detected twice with its two centres on both sides of a cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torchvision.ops import batched_nms

from .tiling import balanced_tile, pad_to_multiple, tile_starts

#: Keys of a detection result: boxes (N, 4) xyxy, scores (N,), classes (N,) 1..K,
#: masks (N, M, M) probabilities inside each box.
KEYS = ("boxes", "scores", "classes", "masks")


def empty_detections(mask_size: int = 28) -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
            "classes": np.zeros(0, np.int64), "masks": np.zeros((0, mask_size, mask_size), np.float16)}


def owned_ranges(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """The part [lo, hi) of the axis each tile owns: overlaps cut in the middle."""
    cuts = [(starts[i + 1] + starts[i] + tile) / 2 for i in range(len(starts) - 1)]
    bounds = [-np.inf, *cuts, np.inf]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return empty_detections()
    return {k: np.concatenate([p[k] for p in parts]) for k in KEYS}


def nms(dets: dict[str, np.ndarray], iou: float) -> dict[str, np.ndarray]:
    """Class-wise non-maximum suppression, highest scores first."""
    if len(dets["scores"]) == 0:
        return dets
    keep = batched_nms(torch.from_numpy(dets["boxes"]).float(), torch.from_numpy(dets["scores"]).float(),
                       torch.from_numpy(dets["classes"]), iou).numpy()
    return {k: v[keep] for k, v in dets.items()}


def detect_tiled(
    plane: np.ndarray,
    detect_tile: Callable[[np.ndarray], dict[str, np.ndarray]],
    tile: int = 1024,
    overlap: int = 128,
    multiple: int = 64,
    nms_iou: float = 0.5,
) -> Iterator[tuple[int, int] | dict[str, np.ndarray]]:
    """Run ``detect_tile`` over overlapping tiles of ``plane`` (C, H, W) and merge.

    A generator: yields ``(done, total)`` after every tile, then the merged detections in
    image coordinates (boxes may reach past the image's bottom and right edges, where it
    was padded), sorted by decreasing score.
    """
    if tile % multiple:
        raise ValueError(f"tile size {tile} must be a multiple of {multiple}")
    padded, (h, w) = pad_to_multiple(plane, multiple)
    ph, pw = padded.shape[-2:]
    th, tw = balanced_tile(ph, tile, overlap, multiple), balanced_tile(pw, tile, overlap, multiple)
    ys, xs = tile_starts(ph, th, overlap, multiple), tile_starts(pw, tw, overlap, multiple)
    own_y, own_x = owned_ranges(ys, th, ph), owned_ranges(xs, tw, pw)
    total = len(ys) * len(xs)
    parts: list[dict[str, np.ndarray]] = []
    yield 0, total
    done = 0
    for y, (ylo, yhi) in zip(ys, own_y, strict=True):
        for x, (xlo, xhi) in zip(xs, own_x, strict=True):
            dets = detect_tile(np.ascontiguousarray(padded[:, y : y + th, x : x + tw]))
            boxes = dets["boxes"] + np.asarray([x, y, x, y], np.float32)
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            keep = (cx >= xlo) & (cx < xhi) & (cy >= ylo) & (cy < yhi) & (cx < w) & (cy < h)
            parts.append({**{k: dets[k][keep] for k in KEYS}, "boxes": boxes[keep]})
            done += 1
            yield done, total
    # boxes are not clipped to the image: each mask describes its whole box, and pasting
    # keeps the part inside the image (a clipped box would squeeze the whole mask into it)
    merged = nms(concat(parts), nms_iou) if total > 1 else concat(parts)
    order = np.argsort(-merged["scores"], kind="stable")
    yield {k: v[order] for k, v in merged.items()}
